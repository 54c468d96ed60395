"""Harmonizing a folder: finding the image/mask pairs, sharding, resuming, and reporting bad images.

Layouts `find_batch_items` understands:
- the authors' (their `demo/`): `composite/`, `mask/` and an optional `caption.txt`. A mask is matched by
  name (`003.png` <- `003_mask.png` or `003.png`); if no name matches at all and the counts agree, by sorted
  order, as the authors do. Line i of `caption.txt` belongs to the i-th composite in natural order and holds
  candidate descriptions `source,target` separated by `;`, e.g. `cat bright,cat winter;cat dim,cat dusk`.
- a plain folder of pairs: `x.png` beside `x_mask.png`, or `images/x.png` beside `masks/x.png`
  (a `caption.txt` there works the same way).

`run_batch` writes `<name>.png` and then a `<name>.done.json` marker; a rerun skips names that have both, so
an interrupted batch resumes without redoing anything. A bad image is recorded in `summary.json` (name and a
one-line reason) and the rest go on. `--shard I/N` (or the launcher's ranks: torchrun, accelerate, SLURM, MPI;
see zsharm.distributed) picks every N-th item, so N processes or machines can share one output folder; each item
is claimed (`<name>.claim`) while it runs, so overlapping launches never do it twice. Each shard writes
`summary.shardIofN.json`; `merge_summaries` (`zsharm harmonize --merge --out DIR`) writes one `summary.json`.
"""

from __future__ import annotations

import json
import re
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image
from tqdm.auto import tqdm

from zsharm.describe.captions import DescriptionFormatError, read_caption_pairs
from zsharm.describe.description import Description
from zsharm.distributed import claim_is_held, claimed
from zsharm.errors import ZsharmError, one_line
from zsharm.io.files import atomic_path, write_json
from zsharm.io.folders import MASK_SUFFIX, list_images, natural_key, pair_masks

# What one bad item may raise without stopping the batch: the user's problems and unreadable files
# (PIL reports damaged files as OSError, SyntaxError, ValueError or struct.error).
ITEM_ERRORS = (ZsharmError, OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError)


@dataclass(frozen=True)
class BatchItem:
    """One image of a batch: `name` (the composite's file stem, unique in the batch), the composite, its mask
    (None when none was found: the item is then reported, not run) and the candidate descriptions from
    `caption.txt`, best first, each the stage-1 `Description` its (source, target) pair makes (empty when there is
    none, or when the file was left unread)."""

    name: str
    composite: Path
    mask: Path | None
    captions: tuple[Description, ...] = ()
    caption_file: Path | None = None  # where the captions came from, and their line there (from 1)
    caption_line: int = 0


@dataclass
class BatchSummary:
    """What a `run_batch` call did: names done now, names skipped as already done, names another process was
    doing (`busy`: its claim was there), failures (name, reason)."""

    shard: tuple[int, int]
    total: int
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    prompts: dict[str, dict] = field(default_factory=dict)  # name -> source, target and where they came from
    summary_path: Path | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


# ---------------------------------------------------------------- finding items


def find_batch_items(folder, read_captions: bool = True) -> list[BatchItem]:
    """Every image/mask pair in `folder`, in natural order of the names (see the module docstring), each with
    its line of `caption.txt` read as Descriptions (a pair that makes none is refused, naming the file, the line and
    the image). read_captions=False leaves `caption.txt` unread, for callers that need the pairs only: `zsharm
    describe` writing a new one, `--merge` counting what is done, training an evaluator."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ZsharmError(f"batch folder {folder} does not exist or is not a folder")
    if (folder / "composite").is_dir():
        if not (folder / "mask").is_dir():
            raise ZsharmError(f"{folder} has composite/ but no mask/ folder")
        composites = list_images(folder / "composite")
        pairs = _match_masks(composites, list_images(folder / "mask"), by_order=True)
    elif (folder / "images").is_dir() and (folder / "masks").is_dir():
        composites = list_images(folder / "images")
        pairs = _match_masks(composites, list_images(folder / "masks"), by_order=False)
    else:
        files = list_images(folder)
        masks = [p for p in files if p.stem.endswith(MASK_SUFFIX)]
        composites = [p for p in files if not p.stem.endswith(MASK_SUFFIX)]
        pairs = _match_masks(composites, masks, by_order=False)
    if not composites:
        raise ZsharmError(f"no images found in {folder} (expected composite/ + mask/, images/ + masks/, "
                          f"or x.png beside x_mask.png)")
    names = [p.stem for p in composites]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ZsharmError(f"{folder} holds several images named {duplicates[0]!r} (different extensions); "
                          f"names must be unique")
    caption_file = folder / "caption.txt"
    captions = _read_captions(caption_file, len(composites)) if read_captions else []
    if not captions:
        return [BatchItem(p.stem, p, mask) for p, mask in pairs]
    return [BatchItem(p.stem, p, mask, _descriptions(captions[i], caption_file, i + 1, p.name), caption_file, i + 1)
            for i, (p, mask) in enumerate(pairs)]


def _match_masks(composites: list[Path], masks: list[Path], by_order: bool) -> list[tuple[Path, Path | None]]:
    return list(zip(composites, pair_masks(composites, masks, by_order)))


def _read_captions(path: Path, count: int) -> list[tuple]:
    if not path.is_file():
        return []
    lines = read_caption_pairs(path)
    if len(lines) != count:
        raise ZsharmError(f"{path} has {len(lines)} lines but there are {count} images: one line per image, "
                          f"in natural name order")
    return lines


def _descriptions(pairs, path: Path, line: int, image: str) -> tuple[Description, ...]:
    """One caption line's (source, target) pairs as Descriptions; a refusal says where it is."""
    try:
        return tuple(Description.from_prompts(source, target) for source, target in pairs)
    except DescriptionFormatError as error:
        raise DescriptionFormatError(f"{path}:{line} ({image}): {error}") from None


def prompts_for(item: BatchItem, source: str | None, target: str | None):
    """(candidates, where they come from) for one item: prompts named on the command line win over
    `caption.txt` (candidates None: the caller passes its source and target), then caption.txt's candidate
    descriptions, else the VLM's (None)."""
    if source is not None or target is not None:
        return None, "--source/--target"
    if item.captions:
        return list(item.captions), "caption.txt"
    return None, "vlm"


# ---------------------------------------------------------------- shards


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/N"` -> (I, N): this process does every N-th item starting at I (0 <= I < N)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ZsharmError(f"--shard must look like I/N (e.g. 0/4), got {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise ZsharmError(f"--shard {text}: N must be at least 1")
    if index >= count:
        raise ZsharmError(f"--shard {text}: I must be 0..{count - 1} (shards count from 0)")
    return index, count


def shard_from_env(environ=None) -> tuple[int, int]:
    """The shard of this process from the launcher's variables, (0, 1) when there are none (see
    zsharm.distributed.process_place: torchrun/accelerate, SLURM tasks and arrays, OpenMPI, MPICH)."""
    from zsharm.distributed import process_place
    return process_place(environ).shard


def select_shard(items: Sequence[BatchItem], shard: tuple[int, int]) -> list[BatchItem]:
    """The items of shard (i, n): sorted by name, every n-th starting at i. Shards partition the items."""
    index, count = shard
    ordered = sorted(items, key=lambda item: natural_key(item.name))
    return [item for k, item in enumerate(ordered) if k % count == index]


# ---------------------------------------------------------------- running


def check_outputs_spare_inputs(items: Sequence[BatchItem], out_dir) -> None:
    """Refuse an output folder where a result, marker or claim would replace one of the batch's own files
    (`--out` = the batch folder of `x.png` + `x_mask.png`, or the authors' `composite/`): before any work."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    inputs = {}
    for item in items:
        for path in (item.composite, item.mask, item.caption_file):
            if path is not None and path.exists():
                stat = path.stat()
                inputs[(stat.st_dev, stat.st_ino)] = path
    for item in items:
        for path in (output_path(out_dir, item.name), marker_path(out_dir, item.name),
                     out_dir / f"{item.name}.claim", out_dir / "summary.json"):
            try:
                stat = path.stat()
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) in inputs:
                raise ZsharmError(f"--out {out_dir} would overwrite the input {inputs[(stat.st_dev, stat.st_ino)]} "
                                  f"with {path.name}: write the results to another folder")


def output_path(out_dir, name: str) -> Path:
    return Path(out_dir) / f"{name}.png"


def marker_path(out_dir, name: str) -> Path:
    return Path(out_dir) / f"{name}.done.json"


def is_done(out_dir, name: str) -> bool:
    return output_path(out_dir, name).is_file() and marker_path(out_dir, name).is_file()


def run_batch(items: Sequence[BatchItem], out_dir, process_one: Callable, shard: tuple[int, int] | None = None,
              progress: bool = True, config: dict | None = None) -> BatchSummary:
    """Run `process_one(item, out_path) -> dict` on this shard's items, writing `<name>.png` into `out_dir`.

    `out_path` is a temporary PNG path in `out_dir`: process_one writes the harmonized image there and
    returns a JSON-able dict (scores, timings...); on success the file is moved to `<name>.png` and the dict,
    with the time taken, is written to `<name>.done.json`. Items whose output and marker both exist are
    skipped. An item raising one of ITEM_ERRORS is recorded (name + one-line reason) and the batch goes on;
    anything else (a bug, Ctrl-C) stops it, leaving no partial file. The summary goes to `summary.json`
    (`summary.shardIofN.json` when sharded), rewritten after each item, with `config` (the configuration's
    `to_dict()`, which made every result) when given.
    shard: (i, n); None reads the launcher's RANK/WORLD_SIZE (see `shard_from_env`).
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ZsharmError(f"cannot create the output folder {out_dir}: {error.strerror or error}") from None
    shard = tuple(shard) if shard is not None else shard_from_env()
    index, count = parse_shard(f"{shard[0]}/{shard[1]}")
    mine = select_shard(items, (index, count))
    summary = BatchSummary((index, count), len(mine))
    check_outputs_spare_inputs(items, out_dir)
    name = "summary.json" if count == 1 else f"summary.shard{index}of{count}.json"
    summary.summary_path = out_dir / name
    start = time.perf_counter()

    def save_summary(interrupted=False):
        summary.seconds = time.perf_counter() - start
        write_json(summary.summary_path, {
            "shard": f"{index}/{count}", "total": summary.total, "done": summary.done,
            "skipped": summary.skipped, "busy": summary.busy,
            "failed": [{"name": n, "error": e} for n, e in summary.failed],
            "prompts": summary.prompts,
            "remaining": summary.total - len(summary.done) - len(summary.skipped) - len(summary.busy)
            - len(summary.failed),
            "interrupted": interrupted, "seconds": round(summary.seconds, 3),
            **({"config": config} if config is not None else {})})

    bar = tqdm(mine, desc=f"batch {index}/{count}" if count > 1 else "batch", disable=not progress, unit="image")
    try:
        for item in bar:
            if is_done(out_dir, item.name):
                summary.skipped.append(item.name)
                continue
            with claimed(out_dir, item.name) as mine:
                if not mine:
                    summary.busy.append(item.name)
                    continue
                if is_done(out_dir, item.name):  # finished by another process since the first look
                    summary.skipped.append(item.name)
                    continue
                try:
                    info = _process(item, out_dir, process_one)
                except ITEM_ERRORS as error:
                    summary.failed.append((item.name, one_line(error, with_type=True)))
                    bar.write(f"zsharm: {item.name}: {one_line(error, with_type=True)}", file=sys.stderr)
                else:
                    summary.done.append(item.name)
                    used = {k: info[k] for k in ("source", "target", "prompts_from") if k in info}
                    if used:
                        summary.prompts[item.name] = used
                    bar.set_postfix(done=len(summary.done), failed=len(summary.failed))
            save_summary()
    except BaseException:
        try:
            save_summary(interrupted=True)
        except ZsharmError as error:  # a full disk: the error that stopped the run is the one to see
            print(f"zsharm: {error}", file=sys.stderr)
        raise
    finally:
        bar.close()
    save_summary()
    return summary


def _process(item: BatchItem, out_dir: Path, process_one: Callable) -> dict:
    if item.mask is None:
        raise ZsharmError(f"no mask found for {item.composite.name}")
    start = time.perf_counter()
    final = output_path(out_dir, item.name)
    with atomic_path(final) as temp:
        info = process_one(item, temp)
        if not temp.is_file():
            raise ZsharmError(f"{item.name}: nothing was written")
    info = dict(info or {})
    info.update(name=item.name, composite=str(item.composite), mask=str(item.mask), output=final.name,
                seconds=round(time.perf_counter() - start, 3))
    write_json(marker_path(out_dir, item.name), info)
    return info


# ---------------------------------------------------------------- merging the shards' summaries


# the run summaries zsharm writes: exactly these names, so an image called `summary_beach.png` (whose marker is
# `summary_beach.done.json`) is never read as one
SHARD_SUMMARY = re.compile(r"summary(\.shard\d+of\d+)?\.json")


def merge_summaries(out_dir, items: Sequence[BatchItem] | None = None) -> dict:
    """One `summary.json` for a folder that several shards (or launches) wrote into.

    What is done is read from the `<name>.done.json` markers (the truth, whoever wrote them); failures from the
    shards' summaries, less those done since; `running` names the claims still held. With `items` (the
    batch's input) `remaining` lists exactly what nobody has done yet."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ZsharmError(f"--merge: {out_dir} is not a folder")
    marker_suffix = marker_path("", "").name
    done = sorted((p.name[:-len(marker_suffix)] for p in out_dir.glob("*" + marker_suffix)
                   if output_path(out_dir, p.name[:-len(marker_suffix)]).is_file()), key=natural_key)
    shards = [p for p in out_dir.glob("summary*.json") if SHARD_SUMMARY.fullmatch(p.name)
              and (p.name != "summary.json" or _is_run_summary(p))]
    shards.sort(key=lambda p: p.stat().st_mtime)
    if not shards and not done:
        raise ZsharmError(f"--merge: {out_dir} holds no shard summaries (summary.shardIofN.json) and no results")
    failed, seconds, totals, configs = {}, 0.0, {}, []
    for path in shards:  # oldest first, so a later failure message wins
        try:
            report = json.loads(path.read_text())
            index, count = parse_shard(report["shard"])
        except (OSError, ValueError, KeyError, ZsharmError) as error:
            raise ZsharmError(f"--merge: cannot read {path}: {one_line(error)}") from None
        totals.setdefault(count, {})[index] = int(report.get("total", 0))
        seconds += float(report.get("seconds", 0.0))
        failed.update((f["name"], f["error"]) for f in report.get("failed", []))
        if "config" in report and report["config"] not in configs:
            configs.append(report["config"])
    finished = set(done)
    failed = {name: error for name, error in failed.items() if name not in finished}
    running = sorted((p.name[:-len(".claim")] for p in out_dir.glob("*.claim") if claim_is_held(p)), key=natural_key)
    merged = {"done": done, "failed": [{"name": n, "error": failed[n]} for n in sorted(failed, key=natural_key)],
              "running": running, "shard_seconds": round(seconds, 3)}
    if configs:  # one configuration made every shard's results, else each launch's is listed
        merged["config" if len(configs) == 1 else "configs"] = configs[0] if len(configs) == 1 else configs
    if items is not None:
        accounted = finished | set(failed) | set(running)
        merged["total"] = len(items)
        merged["remaining"] = [i.name for i in sorted(items, key=lambda i: natural_key(i.name))
                               if i.name not in accounted]
    elif totals:
        count = parse_shard(json.loads(shards[-1].read_text())["shard"])[1]  # the latest launch's world size
        merged["total"] = sum(totals[count].values())
        merged["missing_shards"] = [f"{i}/{count}" for i in range(count) if i not in totals[count]]
        merged["remaining"] = max(0, merged["total"] - len(done) - len(failed) - len(running))
    write_json(out_dir / "summary.json", merged)
    return merged


def _is_run_summary(path: Path) -> bool:
    """Whether summary.json was written by an unsharded run (it has a shard), not by an earlier merge."""
    try:
        return "shard" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False
