"""The decision loop around stage 2: harmonize, score, then Continue, Regenerate or Conclude.

Iteration 0 runs every candidate description on the composite and keeps the best-scoring one. Each later
iteration harmonizes the previous output again with the current description, and the evaluator's score decides
what comes next (`decide`). The final output is the best-scoring image seen; without an evaluator the loop
runs a fixed number of iterations with the first description and returns the last image.

Every run can keep its history: each iteration's image, `history.json` and `contact_sheet.png` (history.py).

`DecisionLoop` is stage 3 as one object: the evaluator, the rule and the scoring policy are what it is made
with, so swapping any of them is passing another object:

    DecisionLoop(evaluator, rule=decide, scoring="memory").run(image, mask, candidates, step)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from zsharm import bars

from zsharm.decide.history import History, IterationRecord, format_score, thumbnail
from zsharm.decide.rule import CONCLUDE, CONTINUE, REGENERATE, decide
from zsharm.decide.scoring import SCORINGS, scoring
from zsharm.errors import ZsharmError

DROP = "drop"  # an iteration-0 candidate that was not kept
STOP = "stop"  # the iteration budget ran out


@dataclass
class LoopResult:
    """The final image (best-scoring, or the last one without an evaluator) and the whole history.

    `best_iteration` is the iteration that made it; `best_index` its position in `history` (iteration 0 has
    one record per candidate); `stop_reason` says why the loop ended.
    """

    image: Image.Image
    best_iteration: int
    history: list[IterationRecord]
    best_index: int = 0
    stop_reason: str = ""

    @property
    def best(self) -> IterationRecord:
        return self.history[self.best_index]


def run_loop(image: Image.Image, mask: np.ndarray, candidates: Sequence, step: Callable, score: Callable | None = None,
             regenerate: Callable | None = None, iterations: int = 10, history_dir=None,
             progress: bool = True, reload: Callable | None = None, about: dict | None = None,
             rule: Callable = decide) -> LoopResult:
    """Harmonize `image` (PIL RGB, any size) inside `mask` (bool, same size) with the decision loop.

    candidates: descriptions with `.source` and `.target` prompts (stage 1's output).
    step(image, source, target) -> PIL image: one harmonization iteration (stage 2).
    score(image, mask) -> float in [0, 1]: the evaluator; None runs `iterations` iterations with the first
        candidate and returns the last image.
    regenerate(tried) -> description: asked for a new description on Regenerate, `tried` being every
        description used so far; None picks the best-scoring other candidate (the authors' offline fallback),
        and concludes if there is none. A `regenerate` that returns None also concludes.
    iterations: the budget, iteration 0 included (the authors' `harmonize_iterations`, 10 by default).
    history_dir: where to write every image, `history.json` and `contact_sheet.png` (atomically).
    reload(image) -> PIL image: what the loop goes on from when it goes back to a kept image (after iteration 0,
        and on Regenerate); the authors re-open the JPEG they saved there. None: the image itself.
    about: what to record at the top of `history.json` (e.g. the evaluator and how it scores).
    rule(scores, regenerated) -> "continue" | "regenerate" | "conclude": the decision after each later
        iteration (zsharm.decide.rule.decide, the paper's, by default).
    """
    if iterations < 1:
        raise ZsharmError(f"the loop needs at least 1 iteration, got {iterations}")
    descriptions = list(candidates)
    if not descriptions:
        raise ZsharmError("the loop needs at least one candidate description")
    mask = np.asarray(mask)
    if mask.shape != (image.size[1], image.size[0]):
        raise ZsharmError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.size[0]}x{image.size[1]}")
    history = History(Path(history_dir), about) if history_dir is not None else None
    reload = reload or (lambda kept: kept)

    records: list[IterationRecord] = []
    thumbs: list[Image.Image] = []
    best = {"index": None, "score": -math.inf, "image": None}
    bar = bars.bar(total=iterations, desc="harmonize loop", disable=not progress, leave=False)

    def run(iteration, candidate, current):
        description = descriptions[candidate]
        start = time.perf_counter()
        out = step(current, description.source, description.target)
        seconds = time.perf_counter() - start
        if not isinstance(out, Image.Image):
            raise TypeError(f"step must return a PIL image, got {type(out).__name__}")
        value, score_seconds = None, 0.0
        if score is not None:
            start = time.perf_counter()
            value = _check_score(score(out, mask))
            score_seconds = time.perf_counter() - start
        record = IterationRecord(iteration, candidate, description.source, description.target, value, CONTINUE,
                                 seconds, score_seconds)
        if history is not None:
            record.image_path = history.save_image(out, f"iter{iteration:02d}_cand{candidate}.png")
        records.append(record)
        thumbs.append(thumbnail(out))
        # the first of equal scores wins, so an image is only replaced by a strictly better one
        if value is None or value > best["score"]:
            best.update(index=len(records) - 1, score=-math.inf if value is None else value, image=out)
        return out, record

    # iteration 0: every candidate (only the first without an evaluator), keep the best
    first = []
    for k in range(len(descriptions) if score is not None else 1):
        first.append(run(0, k, image))
    kept = max(range(len(first)), key=lambda k: (first[k][1].score or 0.0, -k))
    for k, (_, record) in enumerate(first):
        record.decision = CONTINUE if k == kept else DROP
    current_candidate = kept
    run_images = [first[kept][0]]
    run_scores = [first[kept][1].score]
    regenerated = False
    stop_reason = "budget"
    _finish_iteration(first[kept][1], iterations, 0)
    if history is not None:
        history.write_json(descriptions, records, best["index"], done=False)
    bar.update(1)
    bar.set_postfix(score=format_score(first[kept][1].score), decision=first[kept][1].decision)

    current = reload(first[kept][0])
    for iteration in range(1, iterations):
        out, record = run(iteration, current_candidate, current)
        run_images.append(out)
        run_scores.append(record.score)
        record.decision = rule(run_scores, regenerated) if score is not None else CONTINUE
        if record.decision not in (CONTINUE, REGENERATE, CONCLUDE):
            raise ZsharmError(f"the decision rule answered {record.decision!r}: give continue, regenerate or "
                              f"conclude")
        _finish_iteration(record, iterations, iteration)
        if record.decision == REGENERATE:
            new = _next_description(descriptions, current_candidate, records, regenerate)
            if new is None:
                record.decision, record.note = CONCLUDE, "no other description to switch to"
            else:
                current_candidate = new
                current = reload(run_images[-3])  # back to the image from two iterations earlier (scored s[-3])
                run_images, run_scores, regenerated = [], [], True
                record.note = f"switch to description {new}"
        elif record.decision == CONTINUE:
            current = out
        run_images = run_images[-3:]  # only the last three can be gone back to
        if history is not None:
            history.write_json(descriptions, records, best["index"], done=False)
        bar.update(1)
        bar.set_postfix(score=format_score(record.score), decision=record.decision)
        if record.decision == CONCLUDE:
            stop_reason = "concluded"
            break
    bar.close()

    best_index = best["index"]
    if history is not None:
        history.write_json(descriptions, records, best_index, done=True, stop_reason=stop_reason)
        history.write_sheet(records, thumbs, best_index)
    return LoopResult(best["image"], records[best_index].iteration, records, best_index, stop_reason)


class DecisionLoop:
    """Stage 3: `evaluator` (an object with `score(image, mask) -> float`, or None for a fixed number of
    iterations with the first description), `rule` (the decision after each iteration, default the paper's) and
    `scoring` ("memory" or "saved_jpeg", zsharm.decide.scoring; a configuration's `evaluator_scoring`).
    `iterations`: the budget (default 10 with an evaluator, as the authors; 1 without)."""

    def __init__(self, evaluator=None, rule: Callable = decide, scoring: str = "memory", iterations: int = None,
                 progress: bool = True):
        if scoring not in SCORINGS:
            raise ZsharmError(f"unknown scoring {scoring!r}; choose one of {sorted(SCORINGS)}")
        if evaluator is not None and not callable(getattr(evaluator, "score", None)):
            raise ZsharmError(f"the evaluator {type(evaluator).__name__} has no score(image, mask) method")
        self.evaluator, self.rule, self.scoring, self.progress = evaluator, rule, scoring, progress
        self.iterations = iterations if iterations is not None else (10 if evaluator is not None else 1)

    def about(self) -> dict:
        """What history.json says of this stage 3."""
        if self.evaluator is None:
            return {"evaluator": None}
        return {"evaluator": getattr(self.evaluator, "name", type(self.evaluator).__name__),
                "scoring": SCORINGS[self.scoring],
                "rule": getattr(self.rule, "__qualname__", type(self.rule).__name__)}

    def run(self, image: Image.Image, mask: np.ndarray, candidates: Sequence, step: Callable, *,
            score_mask: np.ndarray | None = None, regenerate: Callable | None = None, history_dir=None,
            about: dict | None = None, iterations: int = None) -> LoopResult:
        """`run_loop` with this stage 3; `score_mask` is the mask the evaluator sees (default `mask`)."""
        score = reload = None
        if self.evaluator is not None:
            score, reload = scoring(self.evaluator, self.scoring, mask if score_mask is None else score_mask)
        return run_loop(image, mask, candidates, step, score=score, regenerate=regenerate,
                        iterations=iterations if iterations is not None else self.iterations,
                        history_dir=history_dir, progress=self.progress, reload=reload,
                        about={**(about or {}), **self.about()}, rule=self.rule)


def _finish_iteration(record: IterationRecord, iterations: int, iteration: int) -> None:
    """On the last iteration of the budget nothing can follow: Continue and Regenerate become Stop."""
    if iteration == iterations - 1 and record.decision in (CONTINUE, REGENERATE):
        if record.decision == REGENERATE:
            record.note = "the budget ran out before the new description could run"
        record.decision = STOP


def _next_description(descriptions: list, current: int, records: list[IterationRecord], regenerate) -> int | None:
    """Index of the description to switch to, appending a new one when `regenerate` makes it."""
    if regenerate is not None:
        new = regenerate(list(descriptions))
        if new is None:
            return None
        descriptions.append(new)
        return len(descriptions) - 1
    # the authors' offline fallback: another of the given candidates; we take the best-scoring one
    first_scores = {r.candidate: r.score for r in records if r.iteration == 0 and r.candidate != current}
    if not first_scores:
        return None
    return max(sorted(first_scores), key=lambda k: first_scores[k] if first_scores[k] is not None else -1.0)


def _check_score(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ZsharmError(f"the evaluator returned {value!r}, not a number") from None
    if not math.isfinite(value):
        raise ZsharmError(f"the evaluator returned {value}, not a finite score")
    return value
