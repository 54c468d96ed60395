"""Stage 2 end to end: one harmonization iteration, N iterations, and the `zsharm harmonize` command.

    result = run_iteration(pipe, image, mask, "cat bright", "cat winter dull")
    result.image            # PIL, the input's size; background pixels untouched
    result.inversion, result.refinement, result.nulltext, result.edit   # every intermediate, for notebooks

Work happens at an aspect-preserving work size (long side `config.size`, multiples of 64). Iterations run at
work size, as the authors' do; the change found there is carried onto the full-resolution foreground once, at
the end, by an edge-aware colour transfer (zsharm.transfer), so the output keeps the input's detail.
"""

import json
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zsharm.blending import blend, latent_mask, mask_at
from zsharm.config import HarmonizeConfig
from zsharm.diffusion import CallCounter, Run
from zsharm.editing import Edit, edit_with_prompt_to_prompt
from zsharm.errors import ZsharmError
from zsharm.inversion import Inversion, ddim_invert, image_to_tensor
from zsharm.io import Picture, load_image, load_mask, save_picture, work_size
from zsharm.prompts import condition_vocabulary, description_positions, split_object
from zsharm.refinement import Refinement, refine_embeddings
from zsharm.structure import EdgeLoss, NullText, optimize_null_text


@dataclass
class IterationResult:
    image: Image.Image            # the input's size (8-bit RGB view)
    picture: Picture              # the input's size, mode and depth; background bit-identical
    work_image: Image.Image       # the blended result at work size (the next iteration's input)
    work_input: Image.Image       # what this iteration started from, at work size
    mask_work: np.ndarray         # boolean mask at work size
    source: str
    target: str
    inversion: Inversion = None
    refinement: Refinement = None
    nulltext: NullText = None
    edit: Edit = None
    counts: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


@dataclass
class HarmonizeResult:
    image: Image.Image
    picture: Picture
    work_image: Image.Image
    iterations: list


@lru_cache(maxsize=4)
def _pidinet(variant: str, device: str):
    from zsharm.pidinet import load_pidinet
    return load_pidinet(variant=variant, device=device)


def _as_picture(image) -> Picture:
    return image if isinstance(image, Picture) else load_image(image)


def _as_mask(mask, size) -> np.ndarray:
    if isinstance(mask, np.ndarray) and mask.dtype == bool:
        if mask.shape != (size[1], size[0]):
            raise ZsharmError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {size[0]}x{size[1]}")
        if not mask.any():
            raise ZsharmError("mask is empty: no foreground to harmonize")
        if mask.all():
            raise ZsharmError("mask is full: no background to harmonize against")
        return mask
    return load_mask(mask, size=size)


def run_iteration(pipe, image, mask, source: str, target: str, config: HarmonizeConfig = None,
                  progress: bool = True, keep_maps: bool = False, pidinet=None) -> IterationResult:
    """One iteration of the paper's stage 2 on `image` (path, PIL, array or Picture) with `mask`."""
    config = config or HarmonizeConfig()
    picture = _as_picture(image)
    mask = _as_mask(mask, picture.size)
    work_wh = work_size(picture.size, config.size)
    work_input = picture.to_pil_rgb8().resize(work_wh, resample=Image.LANCZOS)
    work = _iterate_at_work_size(pipe, work_input, mask_at(mask, work_wh, config.mask_threshold), source, target,
                                 config, progress, keep_maps, pidinet)
    work.picture = finish(picture, mask, work_input, work.work_image, config)
    work.image = work.picture.to_pil_rgb8()
    return work


def _iterate_at_work_size(pipe, work_input, mask_work, source, target, config, progress, keep_maps, pidinet):
    run = Run(pipe=pipe, config=config, counter=CallCounter(), progress=progress)
    n_object = split_object(source, target, condition_vocabulary())
    tok = pipe.tokenizer
    src_pos = description_positions(tok, source, n_object)
    tgt_pos = description_positions(tok, target, n_object)
    w, h = work_input.size
    mask_latent = latent_mask(mask_work, (w // 8, h // 8), config.mask_threshold)
    seconds = {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        seconds[name] = time.perf_counter() - start
        return out

    generator = torch.Generator().manual_seed(config.seed)
    inversion = timed("inversion", ddim_invert, run, image_to_tensor(work_input), source, generator)
    if config.refine:
        refinement = timed("refinement", refine_embeddings, run, source, target, src_pos, tgt_pos, mask_latent,
                           inversion)
        embeddings = refinement.embeddings
    else:
        refinement = None
        from zsharm.diffusion import text_embeddings
        with torch.no_grad():
            fixed = text_embeddings(run, "refinement", [source, target])
        embeddings = [fixed] * (len(inversion.timesteps) - 1)
    edge_loss = None
    if config.use_edges:
        detector = pidinet if pidinet is not None else _pidinet(config.pidinet_variant, str(run.device))
        full_mask = torch.from_numpy(mask_work.astype(np.float32))[None, None]
        edge_loss = EdgeLoss(run, work_input, full_mask, detector)
    nulltext = timed("nulltext", optimize_null_text, run, inversion, embeddings, edge_loss)
    edit = timed("editing", edit_with_prompt_to_prompt, run, inversion, embeddings, nulltext.uncond, keep_maps)
    if not np.isfinite(edit.latents[-1].float().cpu().numpy()).all():
        raise ZsharmError("the diffusion produced NaN values (try fp32: --dtype fp32)")
    work_output = Image.fromarray(blend(edit.images[1], np.asarray(work_input), mask_work))
    return IterationResult(image=None, picture=None, work_image=work_output, work_input=work_input,
                           mask_work=mask_work, source=source, target=target, inversion=inversion,
                           refinement=refinement, nulltext=nulltext, edit=edit, counts=run.counter.table(),
                           seconds=seconds)


def finish(picture: Picture, mask: np.ndarray, work_before: Image.Image, work_after: Image.Image,
           config: HarmonizeConfig) -> Picture:
    """Carry the work-size change onto the input: same size, mode and depth, background bit-identical."""
    if work_after.size == picture.size and picture.bits == 8 and picture.mode == "RGB":
        return picture.replace_foreground(np.asarray(work_after, dtype=np.float32) / 255.0, mask)
    method = "resize" if config.transfer == "resize" else "guided"
    from zsharm.transfer import transfer_change
    before = np.asarray(work_before, dtype=np.float32) / 255.0
    after = np.asarray(work_after, dtype=np.float32) / 255.0
    full = transfer_change(picture.rgb(), before, after, mask, method=method)
    return picture.replace_foreground(full, mask)


def harmonize(pipe, image, mask, source: str, target: str, config: HarmonizeConfig = None, iterations: int = 1,
              progress: bool = True, history_dir=None, pidinet=None) -> HarmonizeResult:
    """`iterations` harmonization iterations without the evaluator; each starts from the last one's blend."""
    config = config or HarmonizeConfig()
    picture = _as_picture(image)
    mask = _as_mask(mask, picture.size)
    work_wh = work_size(picture.size, config.size)
    start = picture.to_pil_rgb8().resize(work_wh, resample=Image.LANCZOS)
    mask_work = mask_at(mask, work_wh, config.mask_threshold)
    current, results = start, []
    for i in range(iterations):
        result = _iterate_at_work_size(pipe, current, mask_work, source, target, config, progress, False, pidinet)
        results.append(result)
        current = result.work_image
        if history_dir is not None:
            _write_history(history_dir, results, config)
    final = finish(picture, mask, start, current, config)
    return HarmonizeResult(image=final.to_pil_rgb8(), picture=final, work_image=current, iterations=results)


def _write_history(folder, results, config):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    i = len(results) - 1
    results[-1].work_image.save(folder / f"iteration_{i:02d}.png")
    record = dict(config=config.to_dict(), iterations=[
        dict(iteration=k, source=r.source, target=r.target, image=f"iteration_{k:02d}.png", seconds=r.seconds,
             counts=r.counts) for k, r in enumerate(results)])
    tmp = folder / f".history.json.{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, folder / "history.json")


# --- command line --------------------------------------------------------------------------------------------

def register(subparsers):
    p = subparsers.add_parser("harmonize", help="harmonize a composite's foreground with its background",
                              description="Harmonize COMPOSITE's masked foreground with its background.")
    p.add_argument("composite", help="the composite image")
    p.add_argument("--mask", required=True, help="the foreground mask (white = foreground), same size")
    p.add_argument("--out", required=True, help="where to write the result (png, jpg, tif, webp)")
    p.add_argument("--source", help='description of the foreground, e.g. "cat bright" (else asked of the VLM)')
    p.add_argument("--target", help='description of the background, e.g. "cat winter dull"')
    p.add_argument("--model", default="stabilityai/stable-diffusion-2-base",
                   help="hub id, diffusers folder, .safetensors/.ckpt file, or tiny")
    p.add_argument("--schedule", default="paper", choices=["paper", "fast"])
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--steps", type=int, help="DDIM steps (paper: 50)")
    p.add_argument("--seed", type=int, help="seed of the VAE posterior sample (paper: 8888)")
    p.add_argument("--size", type=int, help="long side of the work resolution, a multiple of 64 (512)")
    p.add_argument("--no-edges", action="store_true", help="drop the edge loss from null-text optimisation")
    p.add_argument("--transfer", choices=["guided", "resize"], help="how the change reaches full resolution")
    p.add_argument("--history", help="folder keeping every iteration's image and a JSON record")
    p.add_argument("--device", help="cuda, cpu, mps (default: the best available)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="model precision (fp16 on GPU by default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cli_harmonize)


def cli_harmonize(args) -> int:
    picture = load_image(args.composite)
    mask = load_mask(args.mask, size=picture.size)
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp"):
        raise ZsharmError(f"--out {out}: unknown image format {out.suffix!r} (use .png, .jpg, .tif, .webp)")
    if (args.source is None) != (args.target is None):
        raise ZsharmError("give both --source and --target, or neither (then the VLM describes the composite)")
    overrides = {k: v for k, v in dict(steps=args.steps, seed=args.seed, size=args.size, transfer=args.transfer,
                                         model=args.model).items() if v is not None}
    if args.no_edges:
        overrides["use_edges"] = False
    config = HarmonizeConfig.named(args.schedule, **overrides)
    if args.source is None:
        from zsharm.describe import get_describer
        description = get_describer().describe(picture.to_pil_rgb8(), mask, n=1)[0]
        args.source, args.target = description.source, description.target
    pipe = _load_for_cli(args)
    result = harmonize(pipe, picture, mask, args.source, args.target, config=config, iterations=args.iterations,
                       progress=not args.quiet, history_dir=args.history)
    save_picture(result.picture, out)
    if not args.quiet:
        print(f"{out}  ({args.source!r} -> {args.target!r}, {args.iterations} iteration(s))")
    return 0


def _load_for_cli(args):
    from zsharm.models import load_pipeline
    return load_pipeline(args.model, device=args.device, dtype=args.dtype)
