"""`zsharm harmonize`: one composite, or a folder with --batch (sharded, resumable), or --merge of the shards'
summaries. The command line is checked whole (`check_request`) before any model is loaded.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from zsharm.batch import find_batch_items, merge_summaries
from zsharm.cache import check_cache
from zsharm.commands.options import add_stage2_options, add_vlm_arguments, config_from_options, describer_from_args
from zsharm.errors import ZsharmError
from zsharm.harmonizer import Harmonizer, check_candidates
from zsharm.io.files import check_writable
from zsharm.io.masks import GivenMask, read_pair_once
from zsharm.io.pictures import Picture
from zsharm.io.saving import check_can_save, save_picture
from zsharm.validate import (
    MAX_SEED, check_batch_items, check_device, check_edge_weights, check_evaluator_spec, check_inputs,
    check_prompts, same_file,
)


def register(subparsers):
    p = subparsers.add_parser(
        "harmonize", help="harmonize a composite's foreground with its background (all three stages)",
        description="Harmonize COMPOSITE's masked foreground with its background: describe (a VLM, unless "
                    "--source/--target), edit with Stable Diffusion, and let the evaluator decide when to stop.")
    p.add_argument("composite", nargs="?", help="the composite image")
    p.add_argument("--mask", help="the foreground mask (white = foreground), same size as the composite")
    p.add_argument("--out", required=True, help="output image (png, tif, webp, bmp), or a folder with --batch")
    p.add_argument("--allow-lossy", action="store_true",
                   help="allow a lossy output (.jpg): background pixels change; zsharm says how many")
    p.add_argument("--batch", metavar="DIR", help="harmonize a folder: the authors' layout (composite/, mask/, "
                   "caption.txt) or image + image_mask pairs; resumes where it stopped")
    p.add_argument("--shard", metavar="I/N", help="with --batch: do the I-th of N shares (default: from the launcher: "
                   "torchrun/accelerate RANK, SLURM_PROCID, SLURM array, MPI)")
    p.add_argument("--merge", action="store_true", help="write one summary.json in --out from the shards' summaries "
                   "and results (with --batch: also list what nobody has done yet)")
    p.add_argument("--source", help='description of the foreground, e.g. "cat bright" (skips stage 1)')
    p.add_argument("--target", help='description of the background, e.g. "cat winter dull"')
    p.add_argument("--candidates", type=int, metavar="N",
                   help="descriptions asked of the VLM (default 2, as the authors), or the most taken from a "
                        "caption line; iteration 0 tries each and the evaluator keeps the best")
    p.add_argument("--evaluator", default=os.environ.get("ZSHARM_EVALUATOR") or "auto",
                   help="'authors' (their bestModel.pth, fetched once, ~94 MB), a checkpoint in their layout "
                        "(.pth/.safetensors), 'random', or 'auto': the model's own (--model toy ships one), else "
                        "authors (default: $ZSHARM_EVALUATOR, else auto)")
    p.add_argument("--no-evaluator", action="store_true",
                   help="skip stage 3: a fixed number of iterations (--iterations, default 1), no scores")
    p.add_argument("--iterations", type=int, help="iteration budget (10 with an evaluator, else 1)")
    p.add_argument("--history", help="folder keeping every iteration's image, history.json and a contact sheet")
    p.add_argument("--overwrite", action="store_true",
                   help="with --history: replace the history an earlier run left in that folder")
    p.add_argument("--save-intermediates", metavar="NPZ",
                   help="with one iteration: save every stage's arrays in the reference fixture's format")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_stage2_options(p)
    add_vlm_arguments(p)
    p.set_defaults(func=cli_harmonize)


def cli_harmonize(args) -> int:
    if args.merge:
        return cli_merge(args)
    config = config_from_options(args)
    request = check_request(args, config)
    check_cache()
    if args.candidates is not None and args.candidates > 1 and args.source is not None:
        raise ZsharmError(f"--candidates {args.candidates} asks the VLM for descriptions, but --source/--target "
                          f"give one: drop one of them")
    if args.batch:
        return _cli_batch(args, config)
    out = request.out
    harmonizer = _harmonizer(args, config)
    # the mask as read once: the evaluator's soft view of it comes from the same bytes, as the authors read it
    result = harmonizer(request.picture, request.mask, source=args.source, target=args.target,
                        iterations=args.iterations, history_dir=args.history, name=Path(args.composite).name)
    if args.save_intermediates:
        from zsharm.repro.reference import save_intermediates
        save_intermediates(result.last_iteration, args.save_intermediates)
    if args.allow_lossy and out.suffix.lower() in (".jpg", ".jpeg"):
        from zsharm.io.saving import lossy_background_changes
        changed, total = lossy_background_changes(result.picture, request.mask.foreground, out)
        print(f"zsharm: warning: {out.name} is lossy: {changed:,} of {total:,} background pixels differ from "
              f"the input", file=sys.stderr)
    save_picture(result.picture, out, lossy=args.allow_lossy)
    if not args.quiet:
        best = result.loop.best
        score = "" if best.score is None else f", score {best.score:.3f}"
        print(f"{out}  ({best.source!r} -> {best.target!r}, iteration {best.iteration}{score})")
    return 0


def _harmonizer(args, config, needs_describer=True) -> Harmonizer:
    evaluator = None if args.no_evaluator else args.evaluator
    check_candidates(args.candidates, evaluator)  # before the describer is asked whether it is ready
    describer = None
    if args.source is None:  # the model's own describer (--model toy) unless a VLM option asks for another
        from zsharm.describe.factory import check_describer_ready
        describer = describer_from_args(args)
        if needs_describer:
            check_describer_ready(describer)
    return Harmonizer(model=args.model, config=config, evaluator=evaluator, describer=describer,
                      device=args.device, dtype=args.dtype, progress=not args.quiet, n_candidates=args.candidates)


def _cli_batch(args, config) -> int:
    from zsharm.batch import parse_shard, prompts_for, run_batch
    items = find_batch_items(args.batch)
    shard = parse_shard(args.shard) if args.shard else None
    check_batch_items(items, config, shard, args.out)
    if args.source is not None and any(item.captions for item in items):
        print("zsharm: --source/--target given: they are used for every image, not caption.txt's descriptions",
              file=sys.stderr)
    harmonizer = _harmonizer(args, config, needs_describer=not all(item.captions for item in items))
    out_dir = Path(args.out)

    def process_one(item, out_path):
        candidates, origin = prompts_for(item, args.source, args.target)
        history = out_dir / "history" / item.name if args.history else None
        result = harmonizer(item.composite, item.mask, source=args.source, target=args.target,
                            candidates=candidates, iterations=args.iterations, history_dir=history,
                            name=item.composite.name)
        save_picture(result.picture, out_path)
        best = result.loop.best
        return dict(source=best.source, target=best.target, prompts_from=origin, score=best.score,
                    iteration=best.iteration)

    summary = run_batch(items, out_dir, process_one, shard=shard, progress=not args.quiet, config=config.to_dict())
    if not args.quiet:
        print(f"{len(summary.done)} done, {len(summary.skipped)} already done, {len(summary.failed)} failed "
              f"(summary: {summary.summary_path})")
    for name, reason in summary.failed:
        print(f"  {name}: {reason}", file=sys.stderr)
    return 0 if summary.ok else 1


@dataclass
class Request:
    """A checked single-image request: the inputs as read, and the output path."""

    picture: Picture
    mask: GivenMask
    out: Path


def check_request(args, config) -> Request | None:
    """Check a `zsharm harmonize` command line (argparse namespace) and its files; returns the inputs as read
    (None in batch mode, where each item is checked as it comes)."""
    check_numbers(args)
    check_prompts(args.source, args.target)
    if args.shard and not args.batch:
        raise ZsharmError(f"--shard {args.shard} splits a folder's items: it needs --batch FOLDER")
    iterations = args.iterations
    with_evaluator = not args.no_evaluator and args.evaluator is not None
    if iterations is None:
        iterations = 10 if with_evaluator else 1
    if args.save_intermediates:
        if iterations != 1:
            raise ZsharmError(f"--save-intermediates keeps one iteration's arrays, but {iterations} would run: "
                              f"add --iterations 1" + ("" if not with_evaluator else " (or --no-evaluator)"))
        if not str(args.save_intermediates).endswith(".npz"):
            raise ZsharmError(f"--save-intermediates {args.save_intermediates}: name an .npz file")
        check_writable(args.save_intermediates)
    if args.history:
        history = Path(args.history)
        if history.exists() and not history.is_dir():
            raise ZsharmError(f"--history {history} is a file; name a folder")
        check_writable(history / "history.json")
        from zsharm.decide.history import run_files
        earlier = run_files(history)
        if earlier and not args.batch and not getattr(args, "overwrite", False):
            raise ZsharmError(f"--history {history} holds an earlier run ({len(earlier)} files, e.g. "
                              f"{earlier[0].name}): add --overwrite to replace it, or name another folder")
    if with_evaluator:
        check_evaluator_spec(args.evaluator)
    if config.use_edges:
        check_edge_weights(config)
    if args.batch:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ZsharmError(f"--out {out} is a file; with --batch it names the output folder")
        check_writable(out / "summary.json")
        check_device(args.device, args.dtype)
        return None
    if not args.composite:
        raise ZsharmError("name a composite image (or a folder with --batch)")
    if not args.mask:
        raise ZsharmError(f"no --mask given for {args.composite}: zsharm needs the foreground mask")
    out = Path(args.out)
    for what, given in (("composite", args.composite), ("mask", args.mask)):
        if same_file(out, Path(given)):
            raise ZsharmError(f"--out {out} is the {what} itself: writing it would destroy the original; "
                              f"name another file")
    picture, mask = read_pair_once(args.composite, args.mask)
    check_can_save(picture, out, lossy=getattr(args, "allow_lossy", False))
    check_inputs(picture, mask, config)
    check_device(args.device, args.dtype)
    return Request(picture, mask, out)


def check_numbers(args) -> None:
    """The counts and the seed of a command line in their ranges."""
    if args.iterations is not None and args.iterations < 1:
        raise ZsharmError(f"--iterations {args.iterations}: at least 1")
    if getattr(args, "candidates", None) is not None and args.candidates < 1:
        raise ZsharmError(f"--candidates {args.candidates}: at least 1")
    if args.steps is not None and args.steps < 2:
        raise ZsharmError(f"--steps {args.steps}: at least 2")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise ZsharmError(f"--seed {args.seed}: a seed is 0 .. 2^64-1")
    if args.size is not None and (args.size < 64 or args.size % 64):
        raise ZsharmError(f"--size {args.size}: a positive multiple of 64 (the model works in 8x8 latent "
                          f"pixels and halves them three times)")


def cli_merge(args) -> int:
    """`zsharm harmonize --merge --out DIR [--batch IN]`: print and write the merged summary."""
    items = find_batch_items(args.batch, read_captions=False) if args.batch else None  # names only
    merged = merge_summaries(args.out, items)
    remaining = merged.get("remaining", [])
    remaining = len(remaining) if isinstance(remaining, list) else remaining
    print(f"{len(merged['done'])} done, {len(merged['failed'])} failed, {len(merged['running'])} running, "
          f"{remaining} remaining (summary: {Path(args.out) / 'summary.json'})")
    for entry in merged["failed"]:
        print(f"  {entry['name']}: {entry['error']}")
    return 0 if not merged["failed"] and not remaining and not merged["running"] else 1
