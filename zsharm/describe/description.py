"""What stage 1 produces: a `Description` (object, foreground and background conditions) and its strict parser,
from a model's answer, the user's prompts or the authors' caption files."""

from __future__ import annotations

import re
from dataclasses import dataclass

from zsharm.describe.captions import DescriptionFormatError, parse_caption_pairs, read_caption_pairs
from zsharm.vocabulary import DICTIONARY, in_dictionary_order, LIST_OF, WORDS


# ----------------------------------------------------------------------------- the description


@dataclass(frozen=True)
class Description:
    """An object name and the imaging-condition words of the foreground and of the background.

    `source` ("dog bright summer") and `target` ("dog dull winter") are the two prompts of stage 2. Two
    descriptions are the same candidate when their word lists are (`same_words`), whatever the object name.
    """

    object: str
    foreground: tuple[str, ...]
    background: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "foreground", tuple(self.foreground))
        object.__setattr__(self, "background", tuple(self.background))
        if not isinstance(self.object, str) or not _GIVEN_PHRASE.fullmatch(self.object):
            raise DescriptionFormatError(f"object {self.object!r} is not a plain lower-case name")
        for side in ("foreground", "background"):
            words = getattr(self, side)
            if not words:
                raise DescriptionFormatError(f"the {side} has no words")
            bad = [word for word in words if not isinstance(word, str) or not _GIVEN_WORD.fullmatch(word)]
            if bad:
                raise DescriptionFormatError(f"{side} word {bad[0]!r} is not a plain lower-case word")

    @property
    def source(self) -> str:
        """The prompt that describes the pasted object as it is: `"OBJECT fgwords"`."""
        return " ".join((self.object, *self.foreground))

    @property
    def target(self) -> str:
        """The prompt that describes it as it should look, in the background's conditions: `"OBJECT bgwords"`."""
        return " ".join((self.object, *self.background))

    @property
    def words(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(foreground words, background words): what makes two candidates different."""
        return self.foreground, self.background

    def same_words(self, other: Description) -> bool:
        return self.words == other.words

    def to_json(self) -> dict:
        """A JSON-ready dict: object, foreground, background, source, target."""
        return {"object": self.object, "foreground": list(self.foreground), "background": list(self.background),
                "source": self.source, "target": self.target}

    @classmethod
    def from_json(cls, data: dict) -> Description:
        return cls(data["object"], tuple(data["foreground"]), tuple(data["background"]))

    def __str__(self) -> str:
        """The paper's answer format, which `parse_description` reads back."""
        return f"{self.object} & (foreground) {' '.join(self.foreground)} & (background) {' '.join(self.background)}"

    @classmethod
    def from_prompts(cls, source: str, target: str, strict: bool = False) -> Description:
        """The description behind a (source, target) prompt pair, e.g. ("dog bright", "dog dim winter").

        The object is the words both prompts start with, up to the first dictionary word (at most three
        words); the rest of each prompt is its side's words, kept in the order given so the prompts come back
        unchanged (lower-cased, spaces tidied). User prompts may use words outside the dictionary (the authors'
        own caption files do: "dusky"); `strict=True` holds them to the VLM rules instead.
        """
        src, tgt = _prompt_words(source, "source"), _prompt_words(target, "target")
        shared = []
        for a, b in zip(src, tgt):
            if a != b or a in WORDS or len(shared) == 3:
                break
            shared.append(a)
        if not shared:
            raise DescriptionFormatError(
                f"source {source!r} and target {target!r} must start with the same object name")
        if len(shared) == len(src) or len(shared) == len(tgt):
            raise DescriptionFormatError(f"source {source!r} and target {target!r} need words after the object name")
        if strict:
            return parse_description(f"{' '.join(shared)} & (foreground) {' '.join(src[len(shared):])} "
                                     f"& (background) {' '.join(tgt[len(shared):])}")
        return cls(" ".join(shared), tuple(src[len(shared):]), tuple(tgt[len(shared):]))


_GIVEN_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
_GIVEN_PHRASE = re.compile(r"[a-z]+(?:-[a-z]+)*(?: [a-z]+(?:-[a-z]+)*){0,2}")


def check_prompt_word(word: str, label: str) -> None:
    """The one word check for prompts from every source (typed, caption files, the Python API): a word of
    letters a-z, hyphens inside it allowed; the refusal says what is wrong with the word."""
    if _GIVEN_WORD.fullmatch(word):
        return
    if any(ch.isalpha() and not ch.isascii() for ch in word):
        raise DescriptionFormatError(f"{label} prompt word {word!r} is not in Latin letters a-z: Stable "
                                     f"Diffusion's text encoder and zsharm's condition words are English")
    odd = next((ch for ch in word if not (ch.isascii() and (ch.isalpha() or ch == "-"))), word[:1])
    raise DescriptionFormatError(f"{label} prompt word {word!r} holds {odd!r}: use words of letters a-z "
                                 f"(hyphens inside a word are fine)")


def _prompt_words(prompt, label: str) -> list[str]:
    if not isinstance(prompt, str):
        raise DescriptionFormatError(f"the {label} prompt must be text, got {type(prompt).__name__}")
    words = prompt.lower().split()
    for word in words:
        check_prompt_word(word, label)
    if not words:
        raise DescriptionFormatError(f"the {label} prompt is empty")
    return words


# ----------------------------------------------------------------------------- the strict parser

MAX_ANSWER_CHARS = 300
# Words no object name contains: the format's own words and the vocabulary of instructions.
_NOT_OBJECT_WORDS = frozenset("""
    foreground background object objects image images picture pictures photo photograph mask composite
    answer output format description describe dictionary word words prompt prompts instruction instructions
    ignore disregard forget previous above below system assistant user model token tokens none nothing
    unknown null undefined example
""".split())
_ARTICLES = ("a ", "an ", "the ")
_OBJECT = re.compile(r"[a-z]+(?: [a-z]+){0,2}")
_SIDE = re.compile(r"\(\s*(foreground|background)\s*\)\s*(.*)", re.S)
_SEPARATORS = re.compile(r"[\s,;]+")


def parse_description(text: str) -> Description:
    """Read one VLM answer; raise `DescriptionFormatError` (with the reason) unless it is exactly

        OBJECT & (foreground) W W ... & (background) W W ...

    Accepted: any letter case, extra spaces, commas between words, one pair of quotes, backticks or `**`
    around the answer or its parts, a final full stop, a leading article before the object. Required: the
    object is 1-3 plain words of letters, none of them a dictionary word or a word of instructions; every W
    is a dictionary word; each side takes at most one word per dictionary list and one brightness word.
    Words come back in dictionary order, so the same choice always makes the same prompts.
    """
    if not isinstance(text, str):
        raise DescriptionFormatError(f"the answer is not text but {type(text).__name__}")
    answer = text.strip()
    if not answer:
        raise DescriptionFormatError("the answer is empty")
    if len(answer) > MAX_ANSWER_CHARS:
        raise DescriptionFormatError(f"the answer is {len(answer)} characters long (a description is one short line)")
    if "\n" in answer or "\r" in answer:
        raise DescriptionFormatError("the answer has more than one line")
    answer = re.sub(r"[*`\"“”]", "", answer).lower().strip().rstrip(".").strip()
    parts = answer.split("&")
    if len(parts) != 3:
        raise DescriptionFormatError(f"expected 3 parts separated by '&', got {len(parts)}")
    name = _parse_object(parts[0])
    sides = {}
    for part, side in zip(parts[1:], ("foreground", "background")):
        match = _SIDE.fullmatch(part.strip())
        if match is None or match.group(1) != side:
            raise DescriptionFormatError(f"the {side} part must start with '({side})', got {part.strip()[:40]!r}")
        sides[side] = _parse_words(match.group(2), side)
    return Description(name, sides["foreground"], sides["background"])


def _parse_object(text: str) -> str:
    name = " ".join(text.replace("'", "").split())
    for article in _ARTICLES:
        if name.startswith(article):
            name = name[len(article):]
            break
    if not _OBJECT.fullmatch(name):
        raise DescriptionFormatError(f"object name {text.strip()[:40]!r} is not 1-3 plain words of letters")
    for word in name.split():
        if word in WORDS:
            raise DescriptionFormatError(f"object name {name!r} holds the dictionary word {word!r}")
        if word in _NOT_OBJECT_WORDS:
            raise DescriptionFormatError(f"object name {name!r} holds {word!r}, which names no object")
    return name


def _parse_words(text: str, side: str) -> tuple[str, ...]:
    words = [word for word in _SEPARATORS.split(text.strip().rstrip(".")) if word]
    if not words:
        raise DescriptionFormatError(f"the {side} has no words")
    taken = {}
    for word in words:
        if word not in WORDS:
            raise DescriptionFormatError(f"{side} word {word[:30]!r} is not in the dictionary")
        group = LIST_OF[word]
        if group in taken:
            raise DescriptionFormatError(f"the {side} takes two {group} words: {taken[group]!r} and {word!r}")
        taken[group] = word
    if "brightness" not in taken:
        raise DescriptionFormatError(f"the {side} has no brightness word ({', '.join(DICTIONARY['brightness'])})")
    return in_dictionary_order(words)


def read_caption_file(path) -> list[list[Description]]:
    """The authors' caption file: line i holds image i's candidates, `src,tgt;src,tgt` (e.g.
    `cat bright,cat winter;cat bright,cat dark`), each pair read by `Description.from_prompts`."""
    return [[Description.from_prompts(*pair) for pair in line] for line in read_caption_pairs(path)]


def parse_caption_line(line: str) -> list[Description]:
    """One caption-file line: `src,tgt` pairs separated by `;`."""
    return [Description.from_prompts(*pair) for pair in parse_caption_pairs(line)]
