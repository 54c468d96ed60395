"""Stage 2 end to end: one harmonization iteration (zsharm.decide.loop runs several, with stage 3 deciding).

    result = run_iteration(pipe, image, mask, "cat bright", "cat winter dull")
    result.image            # PIL, the input's size; background pixels untouched
    result.inversion, result.refinement, result.nulltext, result.edit   # every intermediate, for notebooks

Work happens at an aspect-preserving work size (long side `config.size`, multiples of 64). Iterations run at
work size, as the authors' do; the change found there is carried onto the full-resolution foreground once, at
the end, by an edge-aware colour transfer (zsharm.edit.transfer), so the output keeps the input's detail.
"""

import time
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from zsharm.config import HarmonizeConfig
from zsharm.edit.blending import blend, latent_mask, mask_at
from zsharm.edit.diffusion import CallCounter, Run, image_to_tensor
from zsharm.edit.inputs import check_inputs
from zsharm.edit.inversion import Inversion, ddim_invert
from zsharm.edit.nulltext import NullText, optimize_null_text
from zsharm.edit.prompt_to_prompt import Edit, edit_with_prompt_to_prompt
from zsharm.edit.refinement import Refinement, refine_embeddings
from zsharm.edit.terms import build_terms
from zsharm.edit.tokens import condition_vocabulary, description_positions, split_object
from zsharm.errors import ZsharmError
from zsharm.io.pictures import Picture, work_size
from zsharm.models import prepare_pipeline


@dataclass
class WorkIteration:
    """One iteration at work size, every intermediate kept (what the loop runs, iteration after iteration)."""
    work_input: Image.Image       # what this iteration started from, at work size
    work_image: Image.Image       # the blended result at work size (the next iteration's input)
    mask_work: np.ndarray         # boolean mask at work size
    source: str
    target: str
    inversion: Inversion
    refinement: Refinement | None  # None with config.refine off
    nulltext: NullText
    edit: Edit
    counts: CallCounter           # model work of this iteration
    seconds: dict                 # per stage


@dataclass
class IterationResult(WorkIteration):
    """One iteration carried to the input's resolution (`run_iteration`)."""
    image: Image.Image            # the input's size (8-bit RGB view)
    picture: Picture              # the input's size, mode and depth; background bit-identical


@lru_cache(maxsize=4)
def _pidinet(variant: str, device: str):
    from zsharm.edit.pidinet import load_pidinet
    return load_pidinet(variant=variant, device=device)


def at_work_size(picture: Picture, mask: np.ndarray, config: HarmonizeConfig) -> tuple:
    """(image, mask) at the work size: long side `config.size`, both sides multiples of 64; the image as 8-bit
    RGB PIL, the mask boolean."""
    wh = work_size(picture.size, config.size)
    return picture.to_pil_rgb8().resize(wh, resample=Image.LANCZOS), mask_at(mask, wh, config.mask_threshold)


def run_iteration(pipe, image, mask, source: str, target: str, config: HarmonizeConfig = None,
                  progress: bool = True, keep_maps: bool = False, pidinet=None) -> IterationResult:
    """One iteration of the paper's stage 2 on `image` (path, PIL, array or Picture) with `mask`."""
    config = config or HarmonizeConfig()
    picture, mask = check_inputs(image, mask, config)  # the checks every entry point shares
    work_input, mask_work = at_work_size(picture, mask, config)
    work = iterate_at_work_size(pipe, work_input, mask_work, source, target, config, progress=progress,
                                keep_maps=keep_maps, pidinet=pidinet)
    full = finish(picture, mask, work_input, work.work_image, config)
    return IterationResult(**{f.name: getattr(work, f.name) for f in fields(WorkIteration)}, picture=full,
                           image=full.to_pil_rgb8())


def iterate_at_work_size(pipe, work_input: Image.Image, mask_work: np.ndarray, source: str, target: str,
                         config: HarmonizeConfig, *, progress: bool = True, keep_maps: bool = False,
                         pidinet=None) -> WorkIteration:
    """One iteration on an image already at work size (see `at_work_size`): inversion, refinement, null-text with
    the configured loss terms (the edge loss), Prompt-to-Prompt editing, blending. `pidinet` overrides the published detector (e.g. a random
    one for tests)."""
    pipe = prepare_pipeline(pipe)  # a user's own pipeline: DDIM, frozen, or a one-line refusal
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
        from zsharm.edit.diffusion import text_embeddings
        with torch.no_grad():
            fixed = text_embeddings(run, "refinement", [source, target])
        embeddings = [fixed] * (len(inversion.timesteps) - 1)

    def detector():  # gamma 0: Sobel alone, no PiDiNet to load
        if pidinet is None and config.edge_pidinet_weight > 0:
            return _pidinet(config.pidinet_variant, str(run.device))
        return pidinet
    terms = build_terms(run, work_input, mask_work, detector)
    nulltext = timed("nulltext", optimize_null_text, run, inversion, embeddings, terms)
    edit = timed("editing", edit_with_prompt_to_prompt, run, inversion, embeddings, nulltext.uncond, keep_maps)
    if not np.isfinite(edit.latents[-1].float().cpu().numpy()).all():
        raise ZsharmError("the diffusion produced NaN values (try fp32: --dtype fp32)")
    work_output = Image.fromarray(blend(edit.images[1], np.asarray(work_input), mask_work))
    return WorkIteration(work_input=work_input, work_image=work_output, mask_work=mask_work, source=source,
                         target=target, inversion=inversion, refinement=refinement, nulltext=nulltext, edit=edit,
                         counts=run.counter, seconds=seconds)


def finish(picture: Picture, mask: np.ndarray, work_before: Image.Image, work_after: Image.Image,
           config: HarmonizeConfig) -> Picture:
    """Carry the work-size change onto the input: same size, mode and depth, background bit-identical."""
    if work_after.size == picture.size and picture.bits == 8 and picture.mode == "RGB":
        return picture.replace_foreground(np.asarray(work_after, dtype=np.float32) / 255.0, mask)
    method = "resize" if config.transfer == "resize" else "guided"
    from zsharm.edit.transfer import transfer_change
    before = np.asarray(work_before, dtype=np.float32) / 255.0
    after = np.asarray(work_after, dtype=np.float32) / 255.0
    full = transfer_change(picture.rgb(), before, after, mask, method=method)
    return picture.replace_foreground(full, mask)
