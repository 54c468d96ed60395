"""The whole method: describe (stage 1), harmonize (stage 2), evaluate and decide (stage 3).

    from zsharm.pipeline import Harmonizer
    harmonizer = Harmonizer(model="stabilityai/stable-diffusion-2-base", evaluator=None)
    result = harmonizer("composite.png", "mask.png")            # descriptions from the VLM
    result = harmonizer("composite.png", "mask.png", source="cat bright", target="cat winter dull")
    result.picture, result.image, result.loop.history

The decision loop runs at work size; the final, best-scoring image is carried to the input's resolution once.
This module also holds the `zsharm harmonize` command (single image or `--batch`).
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from typing import TYPE_CHECKING

from zsharm.config import HarmonizeConfig
from zsharm.errors import ZsharmError
from zsharm.io import Picture, save_picture

if TYPE_CHECKING:  # stage 2 imports torch: loaded when work starts, so `zsharm harmonize --help` is instant
    from zsharm.edit.iteration import IterationResult


@dataclass
class HarmonizeResult:
    image: Image.Image
    picture: Picture
    work_image: Image.Image
    iterations: list


@dataclass
class PipelineResult:
    image: Image.Image       # 8-bit RGB view at the input's size
    picture: Picture         # the input's size, mode and depth
    loop: object             # zsharm.loop.LoopResult: per-iteration descriptions, scores, decisions
    last_iteration: "IterationResult"  # the intermediates of the last stage-2 iteration


class Harmonizer:
    """All three stages with their models loaded once; call it on (image, mask)."""

    def __init__(self, model="stabilityai/stable-diffusion-2-base", config: HarmonizeConfig = None,
                 evaluator=None, describer=None, device=None, dtype=None, pipe=None, pidinet=None,
                 progress: bool = True):
        from zsharm.models import load_pipeline
        from zsharm.validate import check_device
        self.config = config or HarmonizeConfig.fast()
        if pipe is None:
            check_device(device, self.config.dtype if self.config.dtype != "auto" else None)
        if dtype is None:
            dtype = self.config.torch_dtype(device)
        self.pipe = pipe if pipe is not None else load_pipeline(model, device=device, dtype=dtype)
        if isinstance(evaluator, str):
            from zsharm.decide.evaluator import load_evaluator
            evaluator = load_evaluator(evaluator, device=device)
        self.evaluator, self.describer, self.pidinet, self.progress = evaluator, describer, pidinet, progress

    def __call__(self, image, mask, source: str = None, target: str = None, candidates=None,
                 iterations: int = None, history_dir=None, name: str = None) -> PipelineResult:
        from zsharm.edit.iteration import _iterate_at_work_size, at_work_size, finish
        from zsharm.validate import check_inputs, check_prompts
        check_prompts(source, target, getattr(self.pipe, "tokenizer", None))
        picture, mask = check_inputs(image, mask, self.config)
        cfg = self.config
        if iterations is None:
            iterations = 10 if self.evaluator is not None else 1
        start, mask_work = at_work_size(picture, mask, cfg)
        from_vlm = source is None and not candidates
        candidates = self._candidates(picture, mask, source, target, candidates, name)
        last = {}

        def step(current, src, tgt):
            last["result"] = _iterate_at_work_size(self.pipe, current, mask_work, src, tgt, cfg, self.progress,
                                                   False, self.pidinet)
            return last["result"].work_image

        score = None
        if self.evaluator is not None:
            score = self.evaluator.score
        regenerate = self._regenerator(picture, mask, name) if from_vlm else None
        from zsharm.loop import run_loop
        loop = run_loop(start, mask_work, candidates, step, score=score, regenerate=regenerate,
                        iterations=iterations, history_dir=history_dir, progress=self.progress)
        final = finish(picture, mask, start, loop.image, cfg)
        return PipelineResult(image=final.to_pil_rgb8(), picture=final, loop=loop,
                              last_iteration=last.get("result"))

    def _regenerator(self, picture, mask, name):
        """Stage 1 asked again for a description unlike those tried (None when it has no new one)."""
        from zsharm.describe.describers import DescriptionExhaustedError

        def regenerate(tried):
            try:
                return self.describer.regenerate(picture.to_pil_rgb8(), mask, tried, name=name)
            except DescriptionExhaustedError:
                return None
        return regenerate

    def _candidates(self, picture, mask, source, target, candidates, name):
        from zsharm.describe.describers import Description
        if candidates:
            return [c if hasattr(c, "source") else Description.from_prompts(*c) for c in candidates]
        if (source is None) != (target is None):
            raise ZsharmError("give both source and target descriptions, or neither (then the VLM describes)")
        if source is not None:
            return [Description.from_prompts(source, target)]
        if self.describer is None:
            from zsharm.describe.describers import get_describer
            self.describer = get_describer()
        n = 2 if self.evaluator is not None else 1  # without an evaluator only the first would be used
        return self.describer.describe(picture.to_pil_rgb8(), mask, n=n, name=name)


# --- command line --------------------------------------------------------------------------------------------

def harmonize(pipe, image, mask, source: str, target: str, config: HarmonizeConfig = None, iterations: int = 1,
              progress: bool = True, history_dir=None, pidinet=None) -> HarmonizeResult:
    """`iterations` harmonization iterations without the evaluator; each starts from the last one's blend.

    history_dir keeps every iteration's image, history.json and a contact sheet (zsharm.loop's format)."""
    from zsharm.describe.describers import Description
    from zsharm.edit.iteration import _iterate_at_work_size, at_work_size, finish
    from zsharm.loop import run_loop
    from zsharm.validate import check_inputs, check_prompts
    config = config or HarmonizeConfig()
    check_prompts(source, target)
    picture, mask = check_inputs(image, mask, config)
    start, mask_work = at_work_size(picture, mask, config)
    results = []

    def step(current, src, tgt):
        results.append(_iterate_at_work_size(pipe, current, mask_work, src, tgt, config, progress, False, pidinet))
        return results[-1].work_image

    loop = run_loop(start, mask_work, [Description.from_prompts(source, target)], step, iterations=iterations,
                    history_dir=history_dir, progress=progress and iterations > 1)
    final = finish(picture, mask, start, loop.image, config)
    return HarmonizeResult(image=final.to_pil_rgb8(), picture=final, work_image=loop.image, iterations=results)


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
    p.add_argument("--shard", metavar="I/N", help="with --batch: do the I-th of N shares (default: from RANK/WORLD_SIZE)")
    p.add_argument("--source", help='description of the foreground, e.g. "cat bright" (skips stage 1)')
    p.add_argument("--target", help='description of the background, e.g. "cat winter dull"')
    p.add_argument("--candidates", type=int, default=2, help="descriptions asked of the VLM (default 2)")
    p.add_argument("--model", default="stabilityai/stable-diffusion-2-base",
                   help="hub id, diffusers folder, .safetensors/.ckpt file, or tiny (default: %(default)s)")
    p.add_argument("--schedule", default="fast", choices=["paper", "fast"],
                   help="paper: the authors' pipeline number for number; fast: the same method, faster (default)")
    p.add_argument("--evaluator", default=os.environ.get("ZSHARM_EVALUATOR"),
                   help="evaluator checkpoint (.safetensors/.pth), 'authors' or 'random' (default: $ZSHARM_EVALUATOR)")
    p.add_argument("--no-evaluator", action="store_true", help="skip stage 3: a fixed number of iterations")
    p.add_argument("--iterations", type=int, help="iteration budget (10 with an evaluator, else 1)")
    p.add_argument("--steps", type=int, help="DDIM steps (paper: 50; fast: 20)")
    p.add_argument("--seed", type=int, help="seed of the VAE posterior sample (8888)")
    p.add_argument("--size", type=int, help="long side of the work resolution, a multiple of 64 (512)")
    p.add_argument("--no-edges", action="store_true", help="drop the edge loss from null-text optimisation")
    p.add_argument("--transfer", choices=["guided", "resize"], help="how the change reaches full resolution")
    p.add_argument("--history", help="folder keeping every iteration's image, history.json and a contact sheet")
    p.add_argument("--save-intermediates", metavar="NPZ",
                   help="with one iteration: save every stage's arrays in the reference fixture's format")
    p.add_argument("--device", help="cuda, cpu, mps (default: the best available)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"],
                   help="model precision (default: fp32 under the authors' arithmetic, else fp16 on a GPU)")
    p.add_argument("--arithmetic", choices=["auto", "authors", "fast"],
                   help="authors: fp32 and their attention arithmetic, reproducing their numbers; fast: half "
                        "precision and fused attention (default auto: authors for paper on CPU, else fast)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    from zsharm.describe.describers import add_vlm_arguments
    add_vlm_arguments(p)
    p.set_defaults(func=cli_harmonize)


def _config_from_args(args) -> HarmonizeConfig:
    overrides = {k: v for k, v in dict(steps=args.steps, seed=args.seed, size=args.size, transfer=args.transfer,
                                         model=args.model, dtype=args.dtype,
                                         arithmetic=args.arithmetic).items() if v is not None}
    if args.no_edges:
        overrides["use_edges"] = False
    try:
        return HarmonizeConfig.named(args.schedule, **overrides)
    except ValueError as exc:
        raise ZsharmError(str(exc)) from None


def cli_harmonize(args) -> int:
    from zsharm.validate import check_request
    config = _config_from_args(args)
    request = check_request(args, config)
    if args.batch:
        return _cli_batch(args, config)
    out = request.out
    harmonizer = _harmonizer(args, config)
    result = harmonizer(request.picture, request.mask, source=args.source, target=args.target,
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
                      device=args.device, dtype=args.dtype, progress=not args.quiet)


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
