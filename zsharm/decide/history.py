"""The history of a decision loop on disk: each iteration's image, `history.json` and `contact_sheet.png`."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from zsharm.errors import ZsharmError
from zsharm.io.files import atomic_path, write_json

# contact sheet geometry: one cell per history record
THUMB = 192          # thumbnails fit in THUMB x THUMB
CAPTION_LINES = 5    # iteration, the two prompts (wrapped, never cut short at a usual length), score
LINE_HEIGHT = 14
PAD = 6
SHEET_COLUMNS = 5
CELL_W = THUMB + 2 * PAD
CELL_H = THUMB + 2 * PAD + CAPTION_LINES * LINE_HEIGHT


# what a run writes into its history folder: an earlier run's files are removed first, so a folder never mixes
# two runs (history.json listing one iteration beside another run's iter01_cand0.png)
RUN_FILES = re.compile(r"iter\d+_cand\d+\.png|history\.json|contact_sheet\.png")


def run_files(folder: Path) -> list[Path]:
    """The files of an earlier run in a history folder (none when it does not exist)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if RUN_FILES.fullmatch(p.name) and p.is_file())


@dataclass
class IterationRecord:
    """One harmonization run of the loop.

    `candidate` indexes the descriptions (the given candidates, then any made by Regenerate, in order);
    `image_path` is the PNG's name inside the history folder (None without one); `seconds` is the time of
    the harmonization step, `score_seconds` that of the evaluator; `note` explains a forced decision.
    """

    iteration: int
    candidate: int
    source: str
    target: str
    score: float | None
    decision: str
    seconds: float
    score_seconds: float = 0.0
    image_path: str | None = None
    note: str = ""


class History:
    def __init__(self, folder: Path, about: dict | None = None):
        self.folder, self.about = folder, dict(about or {})
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for old in run_files(folder):
                old.unlink()
        except OSError as error:
            raise ZsharmError(f"cannot prepare the history folder {folder}: {error.strerror or error}") from None

    def save_image(self, image: Image.Image, name: str) -> str:
        with atomic_path(self.folder / name) as temp:
            image.save(temp)
        return name

    def write_json(self, descriptions, records, best_index, done, stop_reason=None):
        best = records[best_index] if best_index is not None else None
        data = {
            **self.about,
            "done": done,
            "stop_reason": stop_reason,
            "best_index": best_index,
            "best_iteration": best.iteration if best else None,
            "best_candidate": best.candidate if best else None,
            "best_score": best.score if best else None,
            "best_image": best.image_path if best else None,
            "descriptions": [_describe(d) for d in descriptions],
            "iterations": [asdict(r) for r in records],
        }
        write_json(self.folder / "history.json", data)

    def write_sheet(self, records, thumbs, best_index):
        sheet = contact_sheet(records, thumbs, best_index)
        with atomic_path(self.folder / "contact_sheet.png") as temp:
            sheet.save(temp)


def _describe(description) -> dict:
    data = {"source": description.source, "target": description.target}
    to_json = getattr(description, "to_json", None)
    if callable(to_json):
        value = to_json()
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        data["description"] = value
    return data


def thumbnail(image: Image.Image) -> Image.Image:
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMB, THUMB))
    return thumb


def contact_sheet(records: Sequence[IterationRecord], thumbs: Sequence[Image.Image],
                  best_index: int | None = None) -> Image.Image:
    """A grid of the history: one cell per record, its thumbnail over its caption (iteration and candidate;
    the source and target prompts, wrapped; score and decision). The best image is framed in green.

    The sheet is min(n, SHEET_COLUMNS) * CELL_W wide and ceil(n / SHEET_COLUMNS) * CELL_H high.
    """
    n = len(records)
    columns = max(1, min(n, SHEET_COLUMNS))
    rows = max(1, math.ceil(n / columns))
    sheet = Image.new("RGB", (columns * CELL_W, rows * CELL_H), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (record, thumb) in enumerate(zip(records, thumbs)):
        x0, y0 = (i % columns) * CELL_W, (i // columns) * CELL_H
        left = x0 + PAD + (THUMB - thumb.width) // 2
        top = y0 + PAD + (THUMB - thumb.height) // 2
        sheet.paste(thumb, (left, top))
        if i == best_index:
            draw.rectangle([left - 3, top - 3, left + thumb.width + 2, top + thumb.height + 2], outline=(0, 170, 0),
                           width=3)
        prompts = _wrap(record.source, draw, font, THUMB) + _wrap(f"-> {record.target}", draw, font, THUMB)
        if len(prompts) > CAPTION_LINES - 2:
            prompts = prompts[:CAPTION_LINES - 3] + [_clip(" ".join(prompts[CAPTION_LINES - 3:]), draw, font, THUMB)]
        lines = [f"iter {record.iteration}  cand {record.candidate}" + ("  BEST" if i == best_index else ""),
                 *prompts, f"score {format_score(record.score)}  {record.decision}"]
        for j, line in enumerate(lines):
            draw.text((x0 + PAD, y0 + 2 * PAD + THUMB + j * LINE_HEIGHT - PAD), line, fill="black", font=font)
    return sheet


def _wrap(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> list:
    """Words of `text` in lines no wider than `width` pixels (a single over-long word is clipped)."""
    lines = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(_clip(word, draw, font, width))
    return lines or [""]


def _clip(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def format_score(value) -> str:
    return "-" if value is None else f"{value:.3f}"
