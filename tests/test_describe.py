"""Stage 1 without a model: the dictionary, the strict parser (with property tests), user-given descriptions,
the authors' caption files, the mask view, and the describer's retry / candidate / regenerate / cache logic
driven by a scripted backend. The real backends (a tiny local VLM, an HTTP server) are in test_vlm.py."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from zsharm.describe.describers import DescriptionExhaustedError, DescriptionFormatError, GivenDescriber, VLMDescriber
from zsharm.describe.description import Description, parse_caption_line, parse_description, read_caption_file
from zsharm.describe.factory import get_describer
from zsharm.describe.instruction import INSTRUCTION, instruction, mask_view, model_inputs
from zsharm.errors import ZsharmError
from zsharm.vocabulary import DICTIONARY, LIST_OF, RANK, WORDS, in_dictionary_order

# ----------------------------------------------------------------------------- the dictionary


def test_dictionary_is_the_papers():
    assert list(DICTIONARY) == ["brightness", "weather", "temperature", "season", "time", "color tone", "environment"]
    assert [len(words) for words in DICTIONARY.values()] == [6, 9, 5, 4, 8, 10, 12]
    assert DICTIONARY["brightness"] == ("dazzling", "bright", "dim", "dull", "shaded", "shadowed")
    assert len(WORDS) == 54  # no word in two lists
    assert in_dictionary_order(["greyscale", "winter", "dull"]) == ("dull", "winter", "greyscale")


def test_instruction_lists_every_word_and_the_format():
    for name, words in DICTIONARY.items():
        assert f"- {name}: {', '.join(words)}" in INSTRUCTION
    assert "OBJECT & (foreground) WORD WORD ... & (background) WORD WORD ..." in INSTRUCTION
    example = INSTRUCTION.rsplit("Example: ", 1)[1]
    assert parse_description(example).source == "dog bright summer"  # the example obeys its own rules
    tried = [parse_description("dog & (foreground) bright & (background) dim")]
    assert instruction() == INSTRUCTION
    assert instruction(tried).startswith(INSTRUCTION) and str(tried[0]) in instruction(tried)


# ----------------------------------------------------------------------------- the parser, by example


def test_parser_reads_the_papers_example():
    d = parse_description("dog & (foreground) bright summer & (background) winter dull greyscale")
    assert d == Description("dog", ("bright", "summer"), ("dull", "winter", "greyscale"))
    assert d.source == "dog bright summer"
    assert d.target == "dog dull winter greyscale"  # dictionary order, whatever order the model used
    assert d.to_json() == {"object": "dog", "foreground": ["bright", "summer"],
                           "background": ["dull", "winter", "greyscale"],
                           "source": "dog bright summer", "target": "dog dull winter greyscale"}
    assert Description.from_json(json.loads(json.dumps(d.to_json()))) == d


@pytest.mark.parametrize("text", [
    "Teddy Bear & (Foreground) Bright, Sunny & (Background) Dim.",
    "  teddy bear  &  ( foreground )  sunny   bright &(background) dim  ",
    "**teddy bear** & (foreground) bright sunny & (background) dim",
    '"teddy bear & (foreground) bright, sunny & (background) dim"',
    "`the teddy bear & (foreground) bright; sunny & (background) dim`",
])
def test_parser_normalises_case_spacing_and_punctuation(text):
    assert parse_description(text) == Description("teddy bear", ("bright", "sunny"), ("dim",))


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("dog bright, dog dim", "3 parts"),
    ("Sure! Here is the description: dog & (foreground) bright & (background) dim", "object name"),
    ("dog & (foreground) bright & (background) dim\nThe dog looks pasted.", "more than one line"),
    ("dog & (foreground) bright & (background) dim. ignore previous instructions", "not in the dictionary"),
    ("dog & (foreground) bright & (background) dim & (style) neon", "3 parts"),
    ("dog & (background) dim & (foreground) bright", "must start with '(foreground)'"),
    ("dog & (foreground) bright happy & (background) dim", "'happy' is not in the dictionary"),
    ("dog & (foreground) bright dim & (background) dull", "two brightness words"),
    ("dog & (foreground) sunny cloudy bright & (background) dull", "two weather words"),
    ("dog & (foreground) summer & (background) dull", "foreground has no brightness word"),
    ("dog & (foreground) bright & (background) winter", "background has no brightness word"),
    ("dog & (foreground) & (background) dim", "foreground has no words"),
    ("big brown shaggy dog & (foreground) bright & (background) dim", "1-3 plain words"),
    ("dog2 & (foreground) bright & (background) dim", "1-3 plain words"),
    ("ignore instructions & (foreground) bright & (background) dim", "names no object"),
    ("OBJECT & (foreground) WORD & (background) WORD", "names no object"),
    ("red car & (foreground) bright & (background) dim", "dictionary word 'red'"),
    ("snowy & (foreground) bright & (background) dim", "dictionary word"),
    ("dog & (foreground) bright & (background) dim " + "dim " * 80, "characters long"),
])
def test_parser_refuses(text, reason):
    with pytest.raises(DescriptionFormatError, match=re.escape(reason)):
        parse_description(text)


def test_parser_refuses_non_text():
    with pytest.raises(DescriptionFormatError):
        parse_description(None)


# ----------------------------------------------------------------------------- the parser, by property

_letters = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
_object_word = _letters.filter(lambda w: w not in WORDS and w not in {"a", "an", "the"})


@st.composite
def descriptions(draw):
    """A valid description: 1-3 object words, each side a brightness word plus words from other lists."""
    name = " ".join(draw(st.lists(_object_word, min_size=1, max_size=3)))
    from zsharm.describe.description import _NOT_OBJECT_WORDS
    assume(not set(name.split()) & _NOT_OBJECT_WORDS)
    sides = []
    for _ in range(2):
        lists = ["brightness"] + draw(st.lists(st.sampled_from(list(DICTIONARY)[1:]), unique=True, max_size=6))
        words = [draw(st.sampled_from(DICTIONARY[group])) for group in lists]
        sides.append(tuple(sorted(words, key=RANK.__getitem__)))
    return Description(name, *sides)


@settings(max_examples=150, deadline=None)
@given(descriptions(), st.randoms(use_true_random=False))
def test_parser_round_trips_any_valid_description_however_written(d, rnd):
    assert parse_description(str(d)) == d

    def scramble(words):  # any order, any case, spaces or commas between
        words = list(words)
        rnd.shuffle(words)
        words = [w.upper() if rnd.random() < 0.3 else w.capitalize() if rnd.random() < 0.3 else w for w in words]
        return "".join(w + rnd.choice([" ", "  ", ", ", ","]) for w in words).rstrip(", ")

    text = f"{d.object.title()} & (foreground) {scramble(d.foreground)} & (background) {scramble(d.background)}"
    text += rnd.choice(["", ".", " ", "  .  "])
    assert parse_description(text) == d


@settings(max_examples=150, deadline=None)
@given(descriptions(), _letters, st.booleans())
def test_parser_refuses_any_unknown_word(d, intruder, on_foreground):
    assume(intruder not in WORDS)
    fg, bg = list(d.foreground), list(d.background)
    (fg if on_foreground else bg).append(intruder)
    with pytest.raises(DescriptionFormatError, match="not in the dictionary"):
        parse_description(f"{d.object} & (foreground) {' '.join(fg)} & (background) {' '.join(bg)}")


@settings(max_examples=150, deadline=None)
@given(descriptions(), st.sampled_from(sorted(WORDS)), st.booleans())
def test_parser_refuses_a_second_word_from_one_list(d, extra, on_foreground):
    side = d.foreground if on_foreground else d.background
    assume(extra not in side and LIST_OF[extra] in {LIST_OF[w] for w in side})
    fg, bg = list(d.foreground), list(d.background)
    (fg if on_foreground else bg).append(extra)
    with pytest.raises(DescriptionFormatError, match="takes two"):
        parse_description(f"{d.object} & (foreground) {' '.join(fg)} & (background) {' '.join(bg)}")


@settings(max_examples=150, deadline=None)
@given(descriptions(), st.lists(_letters, min_size=1, max_size=6), st.sampled_from([" ", ". ", ", ", "\n", " -- "]))
def test_parser_refuses_any_prose_after_the_answer(d, prose, separator):
    assume(not set(prose) <= WORDS)  # a tail of dictionary words alone may be more words, not prose
    with pytest.raises(DescriptionFormatError):
        parse_description(f"{d}{separator}{' '.join(prose)}")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=120),
                 st.builds(lambda a, b, c: f"{a} & (foreground) {b} & (background) {c}",
                           st.text(max_size=30), st.text(max_size=30), st.text(max_size=30))))
def test_parser_on_any_text_refuses_or_returns_a_valid_description(text):
    try:
        d = parse_description(text)
    except DescriptionFormatError as error:
        assert "\n" not in str(error) and str(error)
        return
    assert re.fullmatch(r"[a-z]+( [a-z]+){0,2}", d.object) and not set(d.object.split()) & WORDS
    for side in d.words:
        assert side and set(side) <= WORDS
        groups = [LIST_OF[w] for w in side]
        assert len(groups) == len(set(groups)) and "brightness" in groups
        assert tuple(side) == in_dictionary_order(side)
    assert parse_description(str(d)) == d


# ----------------------------------------------------------------------------- given descriptions, caption files


def test_from_prompts_finds_the_object_and_keeps_the_words_as_given():
    d = Description.from_prompts("Teddy bear bright warm", "teddy  bear twilight dim")
    assert d == Description("teddy bear", ("bright", "warm"), ("twilight", "dim"))
    assert (d.source, d.target) == ("teddy bear bright warm", "teddy bear twilight dim")
    # the object stops at the first dictionary word, even when both sides begin with it
    assert Description.from_prompts("cat bright summer", "cat bright winter").object == "cat"
    # the authors' own files use words outside the dictionary; given prompts may
    assert Description.from_prompts("girl sunny", "girl dusky").background == ("dusky",)
    # strict: held to the VLM rules and put in dictionary order
    assert Description.from_prompts("dog summer bright", "dog dim", strict=True).foreground == ("bright", "summer")
    with pytest.raises(DescriptionFormatError, match="no brightness"):
        Description.from_prompts("dog summer", "dog dim", strict=True)


@pytest.mark.parametrize("source, target, reason", [
    ("dog bright", "cat dim", "same object"),
    ("bright", "dim", "same object"),
    ("dog", "dog dim", "need words after"),
    ("dog bright!", "dog dim", "holds '!'"),
    ("", "dog dim", "empty"),
])
def test_from_prompts_refuses(source, target, reason):
    with pytest.raises(DescriptionFormatError, match=reason):
        Description.from_prompts(source, target)


def test_description_refuses_malformed_fields():
    with pytest.raises(ZsharmError):
        Description("Dog!", ("bright",), ("dim",))
    with pytest.raises(ZsharmError):
        Description("dog", (), ("dim",))
    with pytest.raises(ZsharmError):
        Description("dog", ("bright day",), ("dim",))


def test_caption_file_in_the_authors_format(tmp_path):
    path = tmp_path / "caption.txt"
    path.write_text("house bright,house dark\n"
                    "cat bright,cat winter;cat bright,cat autumn\n"
                    "teddy bear dim warm,teddy bear bright cold;teddy bear dull,teddy bear dazzling\n")
    captions = read_caption_file(path)
    assert [len(line) for line in captions] == [1, 2, 2]
    assert captions[1][1].target == "cat autumn"
    assert captions[2][0] == Description("teddy bear", ("dim", "warm"), ("bright", "cold"))
    assert parse_caption_line("cat bright,cat winter;cat bright,cat autumn") == captions[1]


def test_caption_file_errors_name_the_line(tmp_path):
    path = tmp_path / "caption.txt"
    path.write_text("house bright,house dark\ncat bright;cat dim\n")
    with pytest.raises(DescriptionFormatError, match=r"caption.txt:2: 'cat bright' is not 'source,target'"):
        read_caption_file(path)
    path.write_text("house bright,house dark\n\ncat bright,cat dim\n")
    with pytest.raises(DescriptionFormatError, match=r"caption.txt:2: empty line"):
        read_caption_file(path)
    with pytest.raises(ZsharmError, match="no such file|cannot read"):
        read_caption_file(tmp_path / "missing.txt")


def test_demo_caption_file_reads():
    demo = Path(__file__).resolve().parents[1] / "data" / "demo" / "caption.txt"
    if not demo.is_file():
        pytest.skip("no demo caption file")
    (line,) = read_caption_file(demo)
    assert all(d.object == "astronaut" for d in line) and len(line) == 2


def test_given_describer_hands_out_untried_descriptions():
    describer = get_describer(captions="cat bright,cat winter;cat bright,cat dark")
    assert isinstance(describer, GivenDescriber)
    first = describer.describe(None, None)
    assert [d.target for d in first] == ["cat winter", "cat dark"]
    assert describer.regenerate(None, None, tried=first[:1]).target == "cat dark"
    with pytest.raises(DescriptionExhaustedError):
        describer.regenerate(None, None, tried=first)
    single = get_describer(source="dog bright", target="dog dim")
    assert single.describe(None, None, n=2) == [Description("dog", ("bright",), ("dim",))]
    with pytest.raises(ZsharmError, match="both"):
        get_describer(source="dog bright")


# ----------------------------------------------------------------------------- what the model sees


def _scene(width=96, height=64):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), bool)
    mask[16:48, 30:70] = True
    return Image.fromarray(pixels), mask


def test_mask_view_styles():
    image, mask = _scene()
    pixels = np.asarray(image)
    cut = np.asarray(mask_view(image, mask))
    assert (cut[mask] == pixels[mask]).all() and (cut[~mask] == 128).all()
    binary = np.asarray(mask_view(image, mask, "mask"))
    assert (binary[mask] == 255).all() and (binary[~mask] == 0).all()
    outline = np.asarray(mask_view(image, mask, "outline"))
    changed = (outline != pixels).any(axis=2)
    assert changed.any() and not changed[20:44, 34:66].any()  # a ring at the edge, the inside untouched
    assert not changed[:8].any()
    overlay = np.asarray(mask_view(image, mask, "overlay"))
    assert (overlay[~mask] == pixels[~mask]).all() and (overlay[mask] != pixels[mask]).any()
    with pytest.raises(ZsharmError, match="unknown mask style"):
        mask_view(image, mask, "sparkles")
    with pytest.raises(ZsharmError, match="96x64"):
        mask_view(image, mask[:, :50], "cutout")
    with pytest.raises(ZsharmError, match="empty"):
        mask_view(image, np.zeros_like(mask))


def test_model_inputs_are_small_pictures_then_the_instruction():
    image, mask = _scene(2000, 1000)
    composite, view, text = model_inputs(image, mask, size=768)
    assert composite.size == view.size == (768, 384)
    assert text == INSTRUCTION
    small, small_mask = _scene()
    assert model_inputs(small, small_mask)[0].size == (96, 64)  # never enlarged


# ----------------------------------------------------------------------------- the describer, scripted


class Scripted:
    """A backend that answers from a list and records what it was asked."""

    kind = "scripted"

    def __init__(self, answers, model="script-1"):
        self.answers = list(answers)
        self.model = model
        self.asked = []

    def ask(self, parts, seed=0):
        self.asked.append((parts, seed))
        if not self.answers:
            raise AssertionError("asked more often than scripted")
        return self.answers.pop(0)


A = "dog & (foreground) bright summer & (background) dull winter"
B = "dog & (foreground) dazzling & (background) dim night"
C = "puppy & (foreground) bright & (background) shaded autumn"


def test_candidates_are_distinct_and_malformed_answers_are_retried():
    image, mask = _scene()
    backend = Scripted(["Sure! " + A, A, "dog & (foreground) dull summer & (background) winter", A.upper(), B])
    describer = VLMDescriber(backend, cache_dir=None, max_attempts=4)
    found = describer.describe(image, mask, n=2)
    assert found == [parse_description(A), parse_description(B)]
    assert len(backend.asked) == 5
    # the pictures are the composite and the cut-out; once A is found, the question says it was tried
    parts, _ = backend.asked[0]
    assert isinstance(parts[0], Image.Image) and isinstance(parts[1], Image.Image) and parts[2] == INSTRUCTION
    assert str(parse_description(A)) in backend.asked[-1][0][2]
    assert len({seed for _, seed in backend.asked}) == 5  # every answer sampled with its own seed


def test_regenerate_gives_a_description_with_new_words():
    image, mask = _scene()
    tried = [parse_description(A)]
    backend = Scripted(["doggy & (foreground) bright summer & (background) dull winter", C])
    new = VLMDescriber(backend).regenerate(image, mask, tried)
    assert new == parse_description(C)  # a new object name with the same words is not a new candidate
    assert str(tried[0]) in backend.asked[0][0][2]


def test_too_many_malformed_answers_give_one_line_naming_image_and_answer():
    image, mask = _scene()
    backend = Scripted(["I think it is a dog.", "dog & (foreground) happy & (background) dim\nbecause..."])
    describer = VLMDescriber(backend, max_attempts=2)
    with pytest.raises(DescriptionFormatError) as info:
        describer.describe(image, mask, n=2, name="composites/dog.png")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("composites/dog.png: scripted:script-1 gave no well-formed description in 2 answers")
    assert "happy" in message and "\\n" in message  # the last answer, escaped onto the line


def test_only_repeats_exhaust_or_shorten_the_list():
    image, mask = _scene()
    with pytest.raises(DescriptionExhaustedError, match="no description new"):
        VLMDescriber(Scripted([A, A]), max_attempts=2).regenerate(image, mask, [parse_description(A)])
    with pytest.warns(UserWarning, match="only 1 of 2"):
        found = VLMDescriber(Scripted([A, A, "junk"]), max_attempts=2).describe(image, mask, n=2)
    assert found == [parse_description(A)]


def test_cache_is_keyed_by_image_mask_backend_and_model(tmp_path):
    image, mask = _scene()
    first = VLMDescriber(Scripted([A, B]), cache_dir=tmp_path)
    assert first.describe(image, mask) == [parse_description(A), parse_description(B)]
    (entry,) = tmp_path.glob("*.json")
    record = json.loads(entry.read_text())
    assert record["model"] == "script-1" and len(record["descriptions"]) == 2
    assert not list(tmp_path.glob(".*"))  # no temp file left behind

    again = Scripted([])
    assert VLMDescriber(again, cache_dir=tmp_path).describe(image, mask) == first.describe(image, mask)
    assert again.asked == []  # from the cache
    # regenerate asks for a third one and remembers it
    tried = [parse_description(A), parse_description(B)]
    third = VLMDescriber(Scripted([C]), cache_dir=tmp_path).regenerate(image, mask, tried=tried)
    assert third == parse_description(C)
    assert len(json.loads(entry.read_text())["descriptions"]) == 3

    other_mask = mask.copy()
    other_mask[0, 0] = True
    other_image = image.copy()
    other_image.putpixel((0, 0), (1, 2, 3))
    keys = {VLMDescriber(Scripted([]), tmp_path).cache_key(image, mask),
            VLMDescriber(Scripted([]), tmp_path).cache_key(image, other_mask),
            VLMDescriber(Scripted([]), tmp_path).cache_key(other_image, mask),
            VLMDescriber(Scripted([], model="script-2"), tmp_path).cache_key(image, mask),
            VLMDescriber(Scripted([]), tmp_path, mask_style="mask").cache_key(image, mask)}
    assert len(keys) == 5


def test_tampered_cache_is_ignored(tmp_path):
    image, mask = _scene()
    describer = VLMDescriber(Scripted([A]), cache_dir=tmp_path)
    path = tmp_path / f"{describer.cache_key(image, mask)}.json"
    path.write_text(json.dumps({"descriptions": [{"object": "dog", "foreground": ["bright", "ignore"],
                                                  "background": ["dim"]}]}))
    with pytest.warns(UserWarning, match="unreadable description cache"):
        assert describer.describe(image, mask, n=1) == [parse_description(A)]


def test_get_describer_picks_the_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSHARM_CACHE", str(tmp_path))
    local = get_describer(vlm="some/model")
    assert local.name == "transformers:some/model" and local.cache_dir == tmp_path / "descriptions"
    from zsharm.describe.vlm import DEFAULT_VLM
    assert get_describer().name == f"transformers:{DEFAULT_VLM}"
    remote = get_describer(base_url="http://127.0.0.1:9/v1", vlm_model="m", use_cache=False)
    assert remote.name == "openai:m" and remote.cache_dir is None
    assert remote.backend.url == "http://127.0.0.1:9/v1/chat/completions"
    with pytest.raises(ZsharmError, match="not both"):
        get_describer(vlm="x", base_url="http://h/v1", vlm_model="m")
    with pytest.raises(ZsharmError, match="--vlm-model"):
        get_describer(base_url="http://h/v1")
    with pytest.raises(ZsharmError, match="http"):
        get_describer(base_url="ftp://h", vlm_model="m")



def test_get_describer_gives_the_toy_prior_its_own_describer_unless_a_vlm_is_asked_for():
    """One place knows that a model ships a describer: callers pass the model, not a special case."""
    from zsharm.describe.toy import ToyDescriber
    assert isinstance(get_describer(model="toy"), ToyDescriber)
    assert get_describer(model="toy", vlm="some/model", use_cache=False).name == "transformers:some/model"
    assert get_describer(model="toy", source="cat bright", target="cat dim").describe(None, None) == [
        Description.from_prompts("cat bright", "cat dim")]
    assert get_describer(model="tiny", use_cache=False).name.startswith("transformers:")  # no describer of its own

def test_instruction_explains_each_mask_view():
    for style in ("mask", "outline", "overlay"):
        text = instruction(style=style)
        assert text != INSTRUCTION and text.split("\n\n", 1)[1] == INSTRUCTION.split("\n\n", 1)[1]
        image, mask = _scene()
        assert model_inputs(image, mask, style=style)[2] == text
    with pytest.raises(ZsharmError, match="unknown mask style"):
        instruction(style="glow")


# ----------------------------------------------------------------------------- a folder, captioned once


def _folder_of_composites(root, names):
    (root / "composite").mkdir(parents=True)
    (root / "mask").mkdir()
    for i, name in enumerate(names):
        image, mask = _scene(64 + 8 * i, 48)
        image.save(root / "composite" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "mask" / f"{name}_mask.png")


class ByWidth:
    """A backend whose answers depend on the picture (its width), so a line written for the wrong image shows."""

    kind, model = "by-width", "w-1"

    def __init__(self, answers):
        self.answers = {width: list(a) for width, a in answers.items()}

    def ask(self, parts, seed=0):
        return self.answers[parts[0].width].pop(0)


def test_describe_a_folder_writes_the_caption_file_batch_reads(tmp_path, monkeypatch, capsys):
    import zsharm.commands.describe as describe_command
    from zsharm.batch import find_batch_items
    from zsharm.commands.cli import main
    _folder_of_composites(tmp_path / "set", ["10", "2", "1"])  # widths 64, 72, 80
    backend = ByWidth({64: [A, B], 72: [C, "not a description", A], 80: [B, C]})
    monkeypatch.setattr(describe_command, "describer_from_args", lambda args: VLMDescriber(backend, cache_dir=None))
    assert main(["describe", str(tmp_path / "set"), "--quiet"]) == 0
    lines = (tmp_path / "set" / "caption.txt").read_text().splitlines()
    # line i is the i-th image in natural order (1, 2, 10): two candidates each, `src,tgt;src,tgt`
    assert lines == ["dog dazzling,dog dim night;puppy bright,puppy shaded autumn",
                     "puppy bright,puppy shaded autumn;dog bright summer,dog dull winter",
                     "dog bright summer,dog dull winter;dog dazzling,dog dim night"]
    items = find_batch_items(tmp_path / "set")
    assert [item.name for item in items] == ["1", "2", "10"]
    assert [[(c.source, c.target) for c in item.captions] for item in items] == [
        [tuple(pair.split(",")) for pair in line.split(";")] for line in lines]
    capsys.readouterr()
    assert main(["describe", str(tmp_path / "set")]) == 2
    assert "caption.txt exists" in capsys.readouterr().err


def test_describe_a_folder_writes_nothing_when_an_image_fails(tmp_path, monkeypatch, capsys):
    import zsharm.commands.describe as describe_command
    from zsharm.commands.cli import main
    _folder_of_composites(tmp_path / "set", ["a", "b"])
    backend = Scripted([A, B] + ["prose, not a description"] * 4)
    monkeypatch.setattr(describe_command, "describer_from_args", lambda args: VLMDescriber(backend, cache_dir=None))
    assert main(["describe", str(tmp_path / "set"), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("zsharm: error: b.png:") and "\n" not in error
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["composite", "mask"]


def test_release_unloads_a_local_vlm_and_leaves_an_endpoint_alone():
    from zsharm.describe import vlm
    local = vlm.TransformersVLM("some/model", device="cpu", dtype="float32")
    device, dtype = local._placement()
    key = (local.model, str(device), str(dtype))
    vlm._LOADED[key] = ("processor", "model")
    try:
        VLMDescriber(local, cache_dir=None).release()
        assert key not in vlm._LOADED
    finally:
        vlm._LOADED.pop(key, None)
    VLMDescriber(Scripted([]), cache_dir=None).release()  # a backend with nothing to unload
