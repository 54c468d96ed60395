"""The authors' caption files: one line per image, `source,target;source,target`, best candidate first."""

from pathlib import Path

from zsharm.errors import ZsharmError
from zsharm.io.files import write_bytes_atomic


class DescriptionFormatError(ZsharmError):
    """A description (a VLM answer, given prompts, a caption line) that breaks the format; says why."""


def parse_caption_pairs(line: str, where: str = None) -> tuple:
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


def read_caption_pairs(path) -> list:
    """The authors' caption file: line i holds the candidate prompt pairs of image i (natural name order).
    Trailing blank lines are ignored; an error names the file and line."""
    path = Path(path)
    try:
        # utf-8-sig: Windows editors begin UTF-8 files with a byte-order mark, which is no part of the first prompt
        lines = path.read_text(encoding="utf-8-sig").rstrip("\n\r ").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ZsharmError(f"cannot read caption file {path}: {getattr(error, 'strerror', None) or error}") from None
    if not lines:
        raise DescriptionFormatError(f"caption file {path} is empty")
    parsed = []
    for number, line in enumerate(lines, 1):
        try:
            parsed.append(parse_caption_pairs(line))
        except DescriptionFormatError as error:  # both spellings of the place: editors', and people's
            raise DescriptionFormatError(f"{path}:{number}: {error} (line {number})") from None
    return parsed



def format_caption_line(pairs) -> str:
    """`src,tgt;src,tgt` from (source, target) pairs, best first: what `parse_caption_line` reads back."""
    pairs = [tuple(pair) for pair in pairs]
    if not pairs:
        raise DescriptionFormatError("a caption line needs at least one (source, target) pair")
    for pair in pairs:
        if len(pair) != 2 or any(not p.strip() or set(p) & {",", ";", "\n", "\r"} for p in pair):
            raise DescriptionFormatError(f"{pair!r} cannot be written as 'source,target'")
    return ";".join(f"{source.strip()},{target.strip()}" for source, target in pairs)


def write_caption_file(path, lines) -> None:
    """The authors' caption file (atomically): line i from the pairs of image i."""
    text = "".join(format_caption_line(pairs) + "\n" for pairs in lines)
    write_bytes_atomic(Path(path), text.encode("utf-8"))
