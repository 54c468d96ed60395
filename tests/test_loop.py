"""The decision loop with a scripted harmonization step and scripted scores.

Each image the scripted step makes is a flat picture whose red value is its serial number, so a test can tell
which image went into every step and which image the loop returned.
"""

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from zsharm.decide.history import CELL_H, CELL_W, contact_sheet, SHEET_COLUMNS
from zsharm.decide.loop import run_loop
from zsharm.decide.rule import decide
from zsharm.errors import ZsharmError


@dataclass(frozen=True)
class Desc:
    object: str
    fg: str
    bg: str

    @property
    def source(self):
        return f"{self.object} {self.fg}"

    @property
    def target(self):
        return f"{self.object} {self.bg}"

    def to_json(self):
        return json.dumps({"object": self.object, "foreground": self.fg, "background": self.bg})


CANDIDATES = [Desc("cat", "bright", "winter"), Desc("cat", "dim", "dusk"), Desc("cat", "sunny", "cloudy")]
SIZE = (24, 16)  # W, H: not square, to catch swapped axes


def serial(image):
    return int(np.asarray(image)[0, 0, 0])


class Script:
    """step() numbers its outputs 1, 2, 3...; score() reads the scripted score of output number n."""

    def __init__(self, scores=()):
        self.scores = list(scores)
        self.calls = []  # (serial of the input image, source, target)
        self.made = 0

    def step(self, image, source, target):
        assert image.size == SIZE
        self.calls.append((serial(image), source, target))
        self.made += 1
        return Image.new("RGB", SIZE, (self.made, 0, 0))

    def score(self, image, mask):
        assert mask.shape == (SIZE[1], SIZE[0]) and mask.dtype == bool
        return self.scores[serial(image) - 1]


def composite():
    return Image.new("RGB", SIZE, (0, 0, 0))  # serial 0


def mask():
    m = np.zeros((SIZE[1], SIZE[0]), bool)
    m[4:12, 6:18] = True
    return m


def decisions(result):
    return [(r.iteration, r.candidate, r.decision) for r in result.history]


# ---------------------------------------------------------------- decide


@pytest.mark.parametrize("scores, regenerated, expected", [
    ([], False, "continue"),
    ([0.5], False, "continue"),
    ([0.9, 0.8], False, "continue"),
    ([0.9, 0.8, 0.7], False, "regenerate"),
    ([0.9, 0.8, 0.7], True, "conclude"),
    ([0.9, 0.8, 0.8], False, "continue"),        # a tie is not a fall
    ([0.8, 0.8, 0.7], False, "continue"),        # nor is an earlier one
    ([0.7, 0.8, 0.9], False, "continue"),
    ([0.8, 0.9, 0.7], False, "continue"),        # one fall only
    ([0.2, 0.9, 0.8, 0.7], False, "regenerate"),  # only the last three count
    ([0.9, 0.8, 0.7, 0.75], True, "continue"),
])
def test_decide(scores, regenerated, expected):
    assert decide(scores, regenerated) == expected


# ---------------------------------------------------------------- branches


def test_continue_until_budget_feeds_each_output_to_the_next_step():
    # one candidate, rising scores: continue every time, stop at the budget, return the last (best) image
    script = Script([0.1, 0.2, 0.3, 0.4, 0.5])
    result = run_loop(composite(), mask(), CANDIDATES[:1], script.step, script.score, iterations=5, progress=False)
    assert [c[0] for c in script.calls] == [0, 1, 2, 3, 4]
    assert decisions(result) == [(0, 0, "continue"), (1, 0, "continue"), (2, 0, "continue"), (3, 0, "continue"),
                                 (4, 0, "stop")]
    assert result.stop_reason == "budget"
    assert serial(result.image) == 5 and result.best_iteration == 4
    assert [r.score for r in result.history] == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_iteration_zero_tries_every_candidate_and_keeps_the_best():
    # outputs 1-3 are the three candidates on the composite; candidate 1 (output 2) scores best
    script = Script([0.2, 0.6, 0.4, 0.65, 0.7])
    result = run_loop(composite(), mask(), CANDIDATES, script.step, script.score, iterations=3, progress=False)
    assert [c[0] for c in script.calls[:3]] == [0, 0, 0]
    assert [c[1:] for c in script.calls[:3]] == [(d.source, d.target) for d in CANDIDATES]
    assert script.calls[3] == (2, CANDIDATES[1].source, CANDIDATES[1].target)  # best candidate's output goes on
    assert script.calls[4] == (4, CANDIDATES[1].source, CANDIDATES[1].target)
    assert decisions(result) == [(0, 0, "drop"), (0, 1, "continue"), (0, 2, "drop"), (1, 1, "continue"),
                                 (2, 1, "stop")]
    assert serial(result.image) == 5


def test_regenerate_goes_back_two_iterations_then_concludes_with_the_best_earlier_image():
    # 1: c0 0.50, 2: c1 0.30 -> keep c0.  c0 run: 3: 0.40, 4: 0.35 -> [0.5, 0.4, 0.35] fell twice: regenerate
    # to c1 starting from output 1 (two iterations earlier).  c1 run: 5: 0.45, 6: 0.44, 7: 0.43 -> conclude.
    script = Script([0.50, 0.30, 0.40, 0.35, 0.45, 0.44, 0.43, 0.9])
    result = run_loop(composite(), mask(), CANDIDATES[:2], script.step, script.score, iterations=10, progress=False)
    assert decisions(result) == [(0, 0, "continue"), (0, 1, "drop"), (1, 0, "continue"), (2, 0, "regenerate"),
                                 (3, 1, "continue"), (4, 1, "continue"), (5, 1, "conclude")]
    assert [c[0] for c in script.calls] == [0, 0, 1, 3, 1, 5, 6]
    assert script.calls[4][1:] == (CANDIDATES[1].source, CANDIDATES[1].target)
    assert script.made == 7  # concluded before the budget: output 8 never made
    assert result.stop_reason == "concluded"
    # the best image is iteration 0's, not the last one
    assert serial(result.image) == 1 and result.best_iteration == 0 and result.best_index == 0


def test_regenerate_asks_stage_one_for_a_new_description():
    tried_lists = []
    new = Desc("cat", "dark", "sunset")

    def regenerate(tried):
        tried_lists.append(list(tried))
        return new

    # single candidate: 1: 0.6, 2: 0.5, 3: 0.4 -> regenerate -> new description from output 1
    script = Script([0.6, 0.5, 0.4, 0.7, 0.8])
    result = run_loop(composite(), mask(), CANDIDATES[:1], script.step, script.score, regenerate=regenerate,
                      iterations=5, progress=False)
    assert tried_lists == [[CANDIDATES[0]]]
    assert script.calls[3] == (1, new.source, new.target)
    assert decisions(result) == [(0, 0, "continue"), (1, 0, "continue"), (2, 0, "regenerate"), (3, 1, "continue"),
                                 (4, 1, "stop")]
    assert serial(result.image) == 5


def test_reload_is_where_the_loop_goes_on_after_iteration_zero_and_on_regenerate():
    """The authors go on from the JPEG they re-open after iteration 0 and on Regenerate, and from the image in
    memory otherwise: `reload` marks exactly those inputs."""
    script = Script([0.50, 0.30, 0.40, 0.35, 0.45, 0.44, 0.43])
    reloaded = []

    def reload(image):
        reloaded.append(serial(image))
        pixels = np.asarray(image).copy()
        pixels[..., 1] = 200
        return Image.fromarray(pixels)

    inputs = []

    def step(image, source, target):
        inputs.append((serial(image), int(np.asarray(image)[0, 0, 1])))
        return script.step(Image.fromarray(np.asarray(image)[..., :1].repeat(3, -1)), source, target)

    run_loop(composite(), mask(), CANDIDATES[:2], step, script.score, iterations=10, reload=reload, progress=False)
    # outputs: 1 (c0, kept), 2 (c1), 3, 4 -> regenerate from 1, 5, 6, 7 -> conclude
    assert reloaded == [1, 1]
    assert inputs == [(0, 0), (0, 0), (1, 200), (3, 0), (1, 200), (5, 0), (6, 0)]


def test_history_records_what_the_caller_says_about_the_run(tmp_path):
    script = Script([0.4, 0.5])
    run_loop(composite(), mask(), CANDIDATES[:1], script.step, script.score, iterations=2, history_dir=tmp_path,
             about={"evaluator": "authors", "scoring": "jpeg"}, progress=False)
    data = json.loads((tmp_path / "history.json").read_text())
    assert data["evaluator"] == "authors" and data["scoring"] == "jpeg"
    assert [(r["score"], r["decision"]) for r in data["iterations"]] == [(0.4, "continue"), (0.5, "stop")]


def test_regenerate_without_other_candidates_concludes():
    script = Script([0.6, 0.5, 0.4, 0.9])
    result = run_loop(composite(), mask(), CANDIDATES[:1], script.step, script.score, iterations=10, progress=False)
    assert decisions(result)[-1] == (2, 0, "conclude")
    assert script.made == 3 and serial(result.image) == 1


def test_no_evaluator_runs_a_fixed_number_of_iterations_with_the_first_candidate():
    script = Script()
    result = run_loop(composite(), mask(), CANDIDATES, script.step, None, iterations=4, progress=False)
    assert script.calls == [(i, CANDIDATES[0].source, CANDIDATES[0].target) for i in range(4)]
    assert [r.score for r in result.history] == [None] * 4
    assert [r.decision for r in result.history] == ["continue"] * 3 + ["stop"]
    assert serial(result.image) == 4 and result.best_iteration == 3


def test_budget_of_one_iteration():
    script = Script([0.3, 0.8])
    result = run_loop(composite(), mask(), CANDIDATES[:2], script.step, script.score, iterations=1, progress=False)
    assert decisions(result) == [(0, 0, "drop"), (0, 1, "stop")]
    assert serial(result.image) == 2


def test_bad_inputs_and_scores_are_reported():
    script = Script([float("nan")])
    with pytest.raises(ZsharmError, match="finite"):
        run_loop(composite(), mask(), CANDIDATES[:1], script.step, script.score, progress=False)
    with pytest.raises(ZsharmError, match="candidate"):
        run_loop(composite(), mask(), [], script.step, None, progress=False)
    with pytest.raises(ZsharmError, match="mask"):
        run_loop(composite(), mask().T, CANDIDATES, script.step, None, progress=False)


# ---------------------------------------------------------------- history


def test_history_files(tmp_path):
    script = Script([0.50, 0.30, 0.40, 0.35, 0.45, 0.44, 0.43])
    folder = tmp_path / "history"
    result = run_loop(composite(), mask(), CANDIDATES[:2], script.step, script.score, iterations=10,
                      history_dir=folder, progress=False)
    data = json.loads((folder / "history.json").read_text())
    assert data["done"] is True and data["stop_reason"] == "concluded"
    assert data["best_index"] == 0 and data["best_iteration"] == 0 and data["best_score"] == 0.5
    assert data["descriptions"][1]["source"] == "cat dim"
    assert data["descriptions"][1]["description"] == {"object": "cat", "foreground": "dim", "background": "dusk"}
    rows = data["iterations"]
    assert [(r["iteration"], r["candidate"], r["score"], r["decision"]) for r in rows] == [
        (r.iteration, r.candidate, r.score, r.decision) for r in result.history]
    assert all(r["seconds"] >= 0 and r["score_seconds"] >= 0 for r in rows)
    # every iteration's image is on disk and is the image that iteration made
    for number, row in enumerate(rows, 1):
        with Image.open(folder / row["image_path"]) as saved:
            assert serial(saved) == number
    assert rows[0]["image_path"] == data["best_image"] == "iter00_cand0.png"
    with Image.open(folder / "contact_sheet.png") as sheet:
        columns = min(len(rows), SHEET_COLUMNS)
        assert sheet.size == (columns * CELL_W, math.ceil(len(rows) / columns) * CELL_H)
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # atomic writes leave no temp files


def test_contact_sheet_draws_each_thumbnail():
    script = Script([0.1, 0.2])
    result = run_loop(composite(), mask(), CANDIDATES[:1], script.step, script.score, iterations=2, progress=False)
    thumbs = [Image.new("RGB", (40, 20), (255, 0, 0)), Image.new("RGB", (40, 20), (0, 0, 255))]
    sheet = np.asarray(contact_sheet(result.history, thumbs, best_index=1))
    assert sheet.shape == (CELL_H, 2 * CELL_W, 3)
    assert (sheet[:, :CELL_W] == (255, 0, 0)).all(-1).sum() == 40 * 20
    blue = (sheet[:, CELL_W:] == (0, 0, 255)).all(-1)
    assert blue.sum() == 40 * 20
    assert (sheet[:, CELL_W:] == (0, 170, 0)).all(-1).any()  # the best one is framed


# ---------------------------------------------------------------- stage 3 as one object


class StandInEvaluator:
    """An evaluator of one's own: only `score(image, mask)`; it records what it was shown."""

    name = "stand-in"

    def __init__(self, scores):
        self.scores, self.shown = list(scores), []

    def score(self, image, mask):
        self.shown.append(np.asarray(image).copy())
        return self.scores.pop(0)


def test_the_evaluator_and_the_rule_of_stage_three_are_what_the_loop_is_made_with(tmp_path):
    """A stand-in rule that concludes at once, and a stand-in evaluator: the loop runs on their answers alone."""
    from zsharm.decide.loop import DecisionLoop
    asked = []

    def conclude_at_once(scores, regenerated):
        asked.append(list(scores))
        return "conclude"

    evaluator = StandInEvaluator([0.2, 0.3, 0.1])
    script = Script()
    result = DecisionLoop(evaluator, rule=conclude_at_once, iterations=10, progress=False).run(
        composite(), mask(), CANDIDATES[:2], script.step, history_dir=tmp_path)
    assert decisions(result) == [(0, 0, "drop"), (0, 1, "continue"), (1, 1, "conclude")]
    assert asked == [[0.3, 0.1]]  # the kept candidate's score, then iteration 1's
    assert [serial(image) for image in evaluator.shown] == [1, 2, 3]
    data = json.loads((tmp_path / "history.json").read_text())
    assert data["evaluator"] == "stand-in" and data["rule"].endswith("conclude_at_once")
    # the paper's rule, given the same scores, would have gone on
    paper = DecisionLoop(StandInEvaluator([0.2, 0.3, 0.1, 0.05, 0.01]), iterations=3, progress=False)
    assert [d for *_, d in decisions(paper.run(composite(), mask(), CANDIDATES[:2], Script().step))][2] == "continue"


def test_the_paper_scoring_shows_the_evaluator_each_blend_after_a_jpeg_round_trip():
    from zsharm.decide.evaluator import jpeg_round_trip
    from zsharm.decide.loop import DecisionLoop
    made = []

    def step(image, source, target):
        rng = np.random.default_rng(len(made))
        made.append(Image.fromarray(rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)))
        return made[-1]

    for policy in ("memory", "saved_jpeg"):
        made.clear()
        evaluator = StandInEvaluator([0.5, 0.6])
        DecisionLoop(evaluator, scoring=policy, iterations=2, progress=False).run(composite(), mask(),
                                                                                  CANDIDATES[:1], step)
        want = [jpeg_round_trip(m) if policy == "saved_jpeg" else np.asarray(m) for m in made]
        assert all(np.array_equal(shown, w) for shown, w in zip(evaluator.shown, want)), policy
        assert not np.array_equal(jpeg_round_trip(made[0]), np.asarray(made[0]))  # the JPEG's loss shows


def test_a_rule_answering_something_else_is_refused():
    from zsharm.decide.loop import DecisionLoop
    loop = DecisionLoop(StandInEvaluator([0.5, 0.6]), rule=lambda scores, regenerated: "maybe", iterations=3,
                        progress=False)
    with pytest.raises(ZsharmError, match="maybe"):
        loop.run(composite(), mask(), CANDIDATES[:1], Script().step)


# ---------------------------------------------------------------- what mutation testing found unguarded


def test_regenerate_without_stage_one_switches_to_the_best_scoring_other_candidate():
    # iteration 0: c0 0.9 (kept), c1 0.1, c2 0.5, c3 0.3; then 0.8, 0.7 -> fell twice: the offline fallback takes
    # c2, neither the first nor the last of the others
    four = [*CANDIDATES, Desc("cat", "pale", "warm")]
    script = Script([0.9, 0.1, 0.5, 0.3, 0.8, 0.7, 0.6])
    result = run_loop(composite(), mask(), four, script.step, script.score, iterations=4, progress=False)
    assert decisions(result)[5] == (2, 0, "regenerate") and result.history[5].note == "switch to description 2"
    assert script.calls[6][1:] == (four[2].source, four[2].target)


def test_the_default_budget_is_ten_iterations_and_only_a_cut_short_regenerate_is_explained():
    script = Script([0.1 * k for k in range(1, 12)])
    result = run_loop(composite(), mask(), CANDIDATES[:1], script.step, script.score, progress=False)
    assert len(result.history) == 10 and result.history[-1].decision == "stop" and result.history[-1].note == ""
    script = Script([0.6, 0.5, 0.4])  # the fall comes on the budget's last iteration
    result = run_loop(composite(), mask(), CANDIDATES[:1], script.step, script.score, iterations=3, progress=False)
    assert result.history[-1].decision == "stop" and "budget" in result.history[-1].note


def test_history_json_names_the_best_record_and_every_description_and_the_sheet_frames_it(tmp_path):
    from collections import namedtuple
    Plain = namedtuple("Plain", "source target")  # a description with no to_json of its own
    script = Script([0.2, 0.6, 0.4])
    folder = tmp_path / "not" / "yet" / "there"  # the history folder's parents are made too
    run_loop(composite(), mask(), [Plain("cat bright", "cat dull"), CANDIDATES[1]], script.step, script.score,
             iterations=2, history_dir=folder, progress=False)
    data = json.loads((folder / "history.json").read_text())
    assert (data["best_index"], data["best_iteration"], data["best_candidate"], data["best_score"]) == (1, 0, 1, 0.6)
    assert data["descriptions"][0] == {"source": "cat bright", "target": "cat dull"}
    assert data["descriptions"][1]["target"] == CANDIDATES[1].target
    with Image.open(folder / "contact_sheet.png") as sheet:
        frame = (np.asarray(sheet.convert("RGB")) == (0, 170, 0)).all(-1)
    assert frame[:, CELL_W:2 * CELL_W].any() and not frame[:, :CELL_W].any()  # the best (second) cell, only
