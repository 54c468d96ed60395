"""Prompts and the token positions of their words.

A description prompt is "OBJECT word word ...": the object, then imaging-condition words. Refinement works on
the tokens of the condition words. CLIP's BPE splits a word into several tokens when it is rare
("greyscale" -> "grey" + "scale"), so positions are found word by word, never assumed one token each.
"""

from pathlib import Path

from zsharm.errors import ZsharmError


class DescriptionFormatError(ZsharmError):
    """A description (a VLM answer, given prompts, a caption line) that breaks the format; says why."""


def parse_caption_line(line: str, where: str = None) -> tuple:
    """One line of the authors' caption file, `src,tgt;src,tgt` -> (("src", "tgt"), ...), best first."""
    prefix = f"{where}: " if where else ""
    if not line.strip():
        raise DescriptionFormatError(f"{prefix}empty line (one line per image)")
    pairs = []
    for pair in line.strip().split(";"):
        prompts = [p.strip() for p in pair.split(",")]
        if len(prompts) != 2 or not all(prompts):
            raise DescriptionFormatError(f"{prefix}{pair.strip()!r} is not 'source,target'")
        pairs.append(tuple(prompts))
    return tuple(pairs)


def read_caption_file(path) -> list:
    """The authors' caption file: line i holds the candidate prompt pairs of image i (natural name order).
    Trailing blank lines are ignored; an error names the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").rstrip("\n\r ").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ZsharmError(f"cannot read caption file {path}: {getattr(error, 'strerror', None) or error}") from None
    if not lines:
        raise DescriptionFormatError(f"caption file {path} is empty")
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            parsed.append(parse_caption_line(line))
        except DescriptionFormatError as error:  # both spellings of the place: editors', and people's
            raise DescriptionFormatError(f"{path}:{number}: {error} (line {number})") from None
    return parsed


def word_token_spans(tokenizer, prompt: str) -> list:
    """[(word, [token positions])] for each whitespace-separated word; position 0 is the start token."""
    words = prompt.split()
    full = tokenizer(prompt).input_ids
    spans, pos = [], 1
    for word in words:
        n = len(tokenizer(word).input_ids) - 2  # without start and end tokens
        spans.append((word, list(range(pos, pos + n))))
        pos += n
    # CLIP's pre-tokenizer splits on whitespace (and punctuation) before BPE, so words tokenize independently
    if pos != len(full) - 1:
        raise ZsharmError(f"prompt {prompt!r} does not tokenize word by word; use plain words without punctuation")
    if pos >= tokenizer.model_max_length - 1:
        raise ZsharmError(f"prompt {prompt!r} is longer than the text encoder's {tokenizer.model_max_length} tokens")
    return spans


def split_object(source: str, target: str, vocabulary=None) -> int:
    """How many leading words of the prompts name the object.

    With a vocabulary (the closed dictionary of condition words), the object is the leading run of words that
    are not in it. Without one, the authors' rule: the first word.
    """
    src, tgt = source.split(), target.split()
    if not src or not tgt:
        raise ZsharmError("source and target prompts must not be empty")
    n = 1
    if vocabulary:
        n = 0
        while n < min(len(src), len(tgt)) - 1 and src[n] == tgt[n] and src[n].lower() not in vocabulary:
            n += 1
        n = max(n, 1)
    if src[:n] != tgt[:n]:
        raise ZsharmError(f"source {source!r} and target {target!r} must start with the same object word")
    if len(src) <= n or len(tgt) <= n:
        raise ZsharmError(f"prompts need at least one condition word after the object: {source!r}, {target!r}")
    return n


def description_positions(tokenizer, prompt: str, object_words: int) -> list:
    """Token positions of the condition words (everything after the object's words)."""
    spans = word_token_spans(tokenizer, prompt)
    return [p for _, positions in spans[object_words:] for p in positions]


def condition_vocabulary():
    """The closed dictionary of condition words, if the describe stage is installed (it is part of zsharm)."""
    try:
        from zsharm.describe import DICTIONARY
    except ImportError:
        return None
    return {w for words in DICTIONARY.values() for w in words}
