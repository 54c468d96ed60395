"""The whole method: describe (stage 1), edit (stage 2), evaluate and decide (stage 3).

    import zsharm
    result = zsharm.harmonize("composite.png", "mask.png")     # SD 2 base, the VLM, the authors' evaluator:
                                                                # 2 VLM descriptions, up to 10 iterations
    harmonizer = zsharm.Harmonizer()                            # the models loaded once, for many images
    result = harmonizer("composite.png", "mask.png", source="cat bright", target="cat winter dull")
    result.picture, result.image, result.loop.history           # history: every score and decision
    Harmonizer(evaluator=None)                                  # no stage 3: a fixed number of iterations

The decision loop runs at work size; the final, best-scoring image is carried to the input's resolution once.
The VLM is released as soon as its descriptions are made (and again after a Regenerate), before Stable
Diffusion needs the memory.
This module also holds the `zsharm harmonize` command (single image or `--batch`).
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from zsharm.config import HarmonizeConfig
from zsharm.errors import ZsharmError
from zsharm.io import Picture, save_picture
from zsharm.options import DEFAULT_MODEL, add_stage2_options, config_from_options

if TYPE_CHECKING:  # stage 2 imports torch: loaded when work starts, so `zsharm harmonize --help` is instant
    from zsharm.edit.iteration import WorkIteration
    from zsharm.loop import LoopResult


@dataclass
class HarmonizeResult:
    image: Image.Image       # 8-bit RGB view at the input's size
    picture: Picture         # the input's size, mode and depth; background bit-identical
    work_image: Image.Image  # the kept (best-scoring, or last) image at work size
    loop: "LoopResult"        # per-iteration descriptions, scores, decisions
    iterations: list         # every stage-2 iteration run (WorkIteration), in order

    @property
    def last_iteration(self) -> "WorkIteration | None":
        return self.iterations[-1] if self.iterations else None


class Harmonizer:
    """All three stages with their models loaded once; call it on (image, mask).

    evaluator: "authors" (the default: their bestModel.pth, fetched once), a checkpoint path, an Evaluator, or
    None for no stage 3 (a fixed number of iterations with the first description). n_candidates: descriptions
    asked of stage 1 (default 2, as the authors; 1 without an evaluator, which would use only the first), and
    the most taken from a caption line. Scoring follows the schedule: `paper` scores each blend as the authors
    do, saved as a quality-75 JPEG and re-read, with the soft mask of the mask file; `fast` scores the image in
    memory.
    """

    def __init__(self, model=DEFAULT_MODEL, config: HarmonizeConfig = None,
                 evaluator="authors", describer=None, device=None, dtype=None, pipe=None, pidinet=None,
                 progress: bool = True, n_candidates: int = None):
        from zsharm.models import load_pipeline, prepare_pipeline
        from zsharm.validate import check_device
        self.config = config or HarmonizeConfig()
        if pipe is None:
            check_device(device, self.config.dtype if self.config.dtype != "auto" else None)
        if n_candidates is not None and n_candidates < 1:
            raise ZsharmError(f"the number of candidate descriptions must be at least 1, got {n_candidates}")
        if n_candidates is not None and n_candidates > 1 and evaluator is None:
            raise ZsharmError(f"{n_candidates} candidate descriptions need the evaluator to choose among them "
                              f"(without it only the first is used)")
        if isinstance(evaluator, (str, os.PathLike)):  # first: a small download that may fail, before SD's
            from zsharm.decide.evaluator import load_evaluator
            evaluator = load_evaluator(evaluator, device=device)
        if dtype is None:
            dtype = self.config.torch_dtype(device)
        self.pipe = (prepare_pipeline(pipe) if pipe is not None else
                     load_pipeline(model, device=device, dtype=dtype, progress=progress))
        self.evaluator, self.describer, self.pidinet, self.progress = evaluator, describer, pidinet, progress
        self.n_candidates = n_candidates

    def __call__(self, image, mask, source: str = None, target: str = None, candidates=None,
                 iterations: int = None, history_dir=None, name: str = None) -> HarmonizeResult:
        """mask: a path (its soft values, read as the authors read them, are what the evaluator sees), or an
        array (bool, or soft values in [0, 1] / uint8) at the image's size."""
        from zsharm.edit.iteration import at_work_size, finish, iterate_at_work_size
        from zsharm.loop import run_loop
        from zsharm.validate import check_inputs, check_prompts
        check_prompts(source, target, getattr(self.pipe, "tokenizer", None))
        mask_given = mask
        picture, mask = check_inputs(image, mask, self.config)
        cfg = self.config
        if iterations is None:
            iterations = 10 if self.evaluator is not None else 1
        start, mask_work = at_work_size(picture, mask, cfg)
        from_vlm = source is None and not candidates
        candidates = self._candidates(picture, mask, source, target, candidates, name)
        runs = []

        def step(current, src, tgt):
            runs.append(iterate_at_work_size(self.pipe, current, mask_work, src, tgt, cfg, progress=self.progress,
                                             pidinet=self.pidinet))
            return runs[-1].work_image

        score = reload = None
        about = {"schedule": cfg.schedule, "evaluator": None}
        if self.evaluator is not None:
            paper = cfg.schedule == "paper"
            scorer = self.evaluator.score_saved if paper else self.evaluator.score
            score_mask = _score_mask(mask_given, mask)

            def score(image, _mask_work):
                return scorer(image, score_mask)
            if paper:  # the authors go on from the re-opened JPEG after iteration 0 and on Regenerate
                from zsharm.decide.evaluator import jpeg_round_trip

                def reload(image):
                    return Image.fromarray(jpeg_round_trip(image))
            about.update(evaluator=getattr(self.evaluator, "name", type(self.evaluator).__name__),
                         scoring="each blend saved as a quality-75 JPEG and re-read (the authors')" if paper
                         else "the blend in memory")
        regenerate = self._regenerator(picture, mask, name) if from_vlm else None
        loop = run_loop(start, mask_work, candidates, step, score=score, regenerate=regenerate,
                        iterations=iterations, history_dir=history_dir, progress=self.progress, reload=reload,
                        about=about)
        final = finish(picture, mask, start, loop.image, cfg)
        return HarmonizeResult(image=final.to_pil_rgb8(), picture=final, work_image=loop.image, loop=loop,
                               iterations=runs)

    def _regenerator(self, picture, mask, name):
        """Stage 1 asked again for a description unlike those tried (None when it has no new one); the VLM is
        released again before stage 2 goes on."""
        from zsharm.describe.describers import DescriptionExhaustedError

        def regenerate(tried):
            try:
                return self.describer.regenerate(picture.to_pil_rgb8(), mask, tried, name=name)
            except DescriptionExhaustedError:
                return None
            finally:
                _release(self.describer)
        return regenerate

    def _candidates(self, picture, mask, source, target, candidates, name):
        from zsharm.describe.describers import Description
        wanted = self.n_candidates or (2 if self.evaluator is not None else 1)
        if candidates:
            given = [c if hasattr(c, "source") else Description.from_prompts(*c) for c in candidates]
            return given[:wanted] if self.n_candidates else given
        if (source is None) != (target is None):
            raise ZsharmError("give both source and target descriptions, or neither (then the VLM describes)")
        if source is not None:
            if self.n_candidates and self.n_candidates > 1:
                raise ZsharmError(f"{self.n_candidates} candidates asked for, but source and target give one")
            return [Description.from_prompts(source, target)]
        if self.describer is None:
            from zsharm.describe.describers import get_describer
            self.describer = get_describer()
        try:
            return self.describer.describe(picture.to_pil_rgb8(), mask, n=wanted, name=name)
        finally:
            _release(self.describer)  # before Stable Diffusion needs the memory


def _release(describer) -> None:
    release = getattr(describer, "release", None)  # a describer of the user's own may hold nothing
    if callable(release):
        release()


def _score_mask(given, mask: np.ndarray) -> np.ndarray:
    """What the evaluator sees of the mask: for a file, the authors' soft reading of it (first channel / 255);
    for an array, its own values; `mask` (zsharm's boolean reading) where the authors' reading would show another
    mask (a cut-out whose alpha is the mask, a 0/1 label map: their reader sees colours or nothing there)."""
    from zsharm.decide.evaluator import read_mask_as_authors, soft_mask
    if isinstance(given, (str, os.PathLike)):
        soft = read_mask_as_authors(given)
    elif isinstance(given, np.ndarray) and given.ndim == 2:
        soft = soft_mask(given)
    else:
        return mask
    if soft.shape != mask.shape or np.mean((soft > MASK_AGREEMENT_THRESHOLD) != mask) > MASK_AGREEMENT:
        return mask
    return soft


MASK_AGREEMENT_THRESHOLD = 100 / 255  # the binarisation both readings share
MASK_AGREEMENT = 0.01  # the soft reading is used when it disagrees with the boolean one on at most 1 % of pixels


def harmonize(image, mask, source: str = None, target: str = None, *, model: str = DEFAULT_MODEL, pipe=None,
              config: HarmonizeConfig = None, evaluator="authors", describer=None, iterations: int = None,
              history_dir=None, progress: bool = True, pidinet=None, device=None) -> HarmonizeResult:
    """Harmonize `image`'s masked foreground in one call: `Harmonizer(...)(image, mask, ...)`, the same defaults.

    Give `pipe` to reuse a loaded pipeline. With `evaluator=None` it runs `iterations` fixed iterations (default
    1), each from the last one's blend; `history_dir` keeps every iteration's image, history.json and a contact
    sheet (zsharm.loop)."""
    harmonizer = Harmonizer(model=model, pipe=pipe, config=config, evaluator=evaluator, describer=describer,
                            pidinet=pidinet, progress=progress, device=device)
    return harmonizer(image, mask, source=source, target=target, iterations=iterations, history_dir=history_dir)


# --- command line --------------------------------------------------------------------------------------------

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
    p.add_argument("--evaluator", default=os.environ.get("ZSHARM_EVALUATOR") or "authors",
                   help="'authors' (their bestModel.pth, fetched once, ~94 MB), a checkpoint in their layout "
                        "(.pth/.safetensors) or 'random' (default: $ZSHARM_EVALUATOR, else authors)")
    p.add_argument("--no-evaluator", action="store_true",
                   help="skip stage 3: a fixed number of iterations (--iterations, default 1), no scores")
    p.add_argument("--iterations", type=int, help="iteration budget (10 with an evaluator, else 1)")
    p.add_argument("--history", help="folder keeping every iteration's image, history.json and a contact sheet")
    p.add_argument("--save-intermediates", metavar="NPZ",
                   help="with one iteration: save every stage's arrays in the reference fixture's format")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_stage2_options(p)
    from zsharm.describe.describers import add_vlm_arguments
    add_vlm_arguments(p)
    p.set_defaults(func=cli_harmonize)


def cli_harmonize(args) -> int:
    if args.merge:
        from zsharm.batch import cli_merge
        return cli_merge(args)
    from zsharm.validate import check_request
    config = config_from_options(args)
    request = check_request(args, config)
    if args.candidates is not None and args.candidates > 1 and args.source is not None:
        raise ZsharmError(f"--candidates {args.candidates} asks the VLM for descriptions, but --source/--target "
                          f"give one: drop one of them")
    if args.batch:
        return _cli_batch(args, config)
    out = request.out
    harmonizer = _harmonizer(args, config)
    # the mask as a path: the evaluator reads its soft values as the authors do
    result = harmonizer(request.picture, args.mask, source=args.source, target=args.target,
                        iterations=args.iterations, history_dir=args.history, name=Path(args.composite).name)
    if args.save_intermediates:
        from zsharm.repro.reference import save_intermediates
        save_intermediates(result.last_iteration, args.save_intermediates)
    if args.allow_lossy and out.suffix.lower() in (".jpg", ".jpeg"):
        from zsharm.io import lossy_background_changes
        changed, total = lossy_background_changes(result.picture, request.mask, out)
        print(f"zsharm: warning: {out.name} is lossy: {changed:,} of {total:,} background pixels differ from "
              f"the input", file=sys.stderr)
    save_picture(result.picture, out, lossy=args.allow_lossy)
    if not args.quiet:
        best = result.loop.best
        score = "" if best.score is None else f", score {best.score:.3f}"
        print(f"{out}  ({best.source!r} -> {best.target!r}, iteration {best.iteration}{score})")
    return 0


def _harmonizer(args, config) -> Harmonizer:
    evaluator = None if args.no_evaluator else args.evaluator
    describer = None
    if args.source is None:
        from zsharm.describe.describers import describer_from_args
        describer = describer_from_args(args)
    return Harmonizer(model=args.model, config=config, evaluator=evaluator, describer=describer,
                      device=args.device, dtype=args.dtype, progress=not args.quiet, n_candidates=args.candidates)


def _cli_batch(args, config) -> int:
    from zsharm.batch import find_batch_items, parse_shard, prompts_for, run_batch
    from zsharm.validate import check_batch_items
    items = find_batch_items(args.batch)
    shard = parse_shard(args.shard) if args.shard else None
    check_batch_items(items, config, shard, args.out)
    if args.source is not None and any(item.captions for item in items):
        print("zsharm: --source/--target given: they are used for every image, not caption.txt's descriptions",
              file=sys.stderr)
    harmonizer = _harmonizer(args, config)
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

    summary = run_batch(items, out_dir, process_one, shard=shard, progress=not args.quiet)
    if not args.quiet:
        print(f"{len(summary.done)} done, {len(summary.skipped)} already done, {len(summary.failed)} failed "
              f"(summary: {summary.summary_path})")
    for name, reason in summary.failed:
        print(f"  {name}: {reason}", file=sys.stderr)
    return 0 if summary.ok else 1
