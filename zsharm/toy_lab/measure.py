"""What the toy prior can do, measured on held-out composites (each figure a benchmark prints and a test keeps):

- `round_trip_psnr`: the VAE alone (encode, decode), in dB against the composite;
- `reconstruction_psnr`: DDIM inversion under the source prompt, then denoising back with guidance, with and
  without null-text optimisation (what makes the inversion exact enough to edit);
- `object_attention_iou`: the object word's cross-attention (the maps refinement reads, averaged over layers
  and steps, divided by their maximum) against the mask;
- `evaluator_auc`, `describer_accuracy`: stage 3 and stage 1 of the toy world.

Every function takes the composites as `world.Composite`s (`held_out(n)`), so the figures are reproducible.
"""

import numpy as np
import torch
from PIL import Image

from zsharm.config import HarmonizeConfig
from zsharm.edit.diffusion import Run, decode_latents, encode_image, image_to_tensor, text_embeddings, to_uint8
from zsharm.edit.inversion import ddim_invert
from zsharm.edit.nulltext import optimize_null_text
from zsharm.toy import world


def held_out(n: int, start: int = 0) -> list:
    """n composites from the held-out seeds (never trained on), the same ones every time."""
    return [world.make_composite(world.HELD_OUT_SEEDS[start + i]) for i in range(n)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    err = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / max(err, 1e-10)))


def toy_config(**changes) -> HarmonizeConfig:
    from zsharm.toy.prior import MODEL_DEFAULTS
    return HarmonizeConfig(**{**MODEL_DEFAULTS, **changes})


@torch.no_grad()
def round_trip_psnr(pipe, composites, config: HarmonizeConfig) -> list[float]:
    run = Run(pipe=pipe, config=config, progress=False)
    out = []
    for made in composites:
        latents = encode_image(run, image_to_tensor(Image.fromarray(made.composite)),
                               torch.Generator().manual_seed(config.seed))
        out.append(psnr(to_uint8(decode_latents(run, "round trip", latents))[0], made.composite))
    return out


def reconstruction_psnr(pipe, composites, config: HarmonizeConfig) -> dict[str, list[float]]:
    """{"ddim": [...], "null-text": [...]}: PSNR of the guided reconstruction of each composite under its source
    prompt, from the plain inversion and after null-text optimisation (no edge loss: reconstruction alone)."""
    from zsharm.teaching.trace import denoise
    run = Run(pipe=pipe, config=config, progress=False)
    out = {"ddim": [], "null-text": []}
    for made in composites:
        inversion = ddim_invert(run, image_to_tensor(Image.fromarray(made.composite)), made.source,
                                torch.Generator().manual_seed(config.seed))
        with torch.no_grad():
            cond, uncond = text_embeddings(run, "trace", [made.source]), text_embeddings(run, "trace", [""])
        plain = denoise(run, inversion, cond, uncond, config.guidance)
        steps = len(inversion.timesteps) - 1
        pair = torch.cat([cond, cond])  # source and target rows: both the source prompt here
        nulltext = optimize_null_text(run, inversion, [pair] * steps, None)
        with torch.no_grad():
            image = to_uint8(decode_latents(run, "reconstruction", plain[-1]))[0]
        out["ddim"].append(psnr(image, made.composite))
        out["null-text"].append(psnr(nulltext.reconstruction, made.composite))
    return out


def object_attention_iou(pipe, composites, config: HarmonizeConfig, threshold: float = 0.5) -> list[float]:
    """IoU between the mask (at the map's size) and the object word's mean cross-attention map, divided by its
    maximum and cut at `threshold`; the maps are those of image/`config.attention_res_divisor`."""
    from zsharm.teaching.trace import trace_attention, word_maps
    div = config.attention_res_divisor
    out = []
    for made in composites:
        trace = trace_attention(pipe, Image.fromarray(made.composite), made.source, config, cross_res=(div,),
                                self_res=())
        mean = trace.recorder.mean(is_cross=True)
        heat = word_maps(mean, trace.spans)[made.scene.obj].numpy()
        heat = heat / max(heat.max(), 1e-12)
        h, w = heat.shape
        small = np.asarray(Image.fromarray(made.mask.astype(np.uint8) * 255).resize((w, h), Image.BOX)) >= 128
        predicted = heat >= threshold
        union = (predicted | small).sum()
        out.append(float((predicted & small).sum() / union) if union else 0.0)
    return out


def evaluator_auc(evaluator, composites) -> float:
    """ROC AUC of the evaluator's harmony score: ground truths (label 1) against composites (label 0)."""
    from zsharm.decide.training import roc_auc
    scores, labels = [], []
    for made in composites:
        for image, label in ((made.truth, 1), (made.composite, 0)):
            scores.append(evaluator.score(Image.fromarray(image), made.mask))
            labels.append(label)
    return float(roc_auc(np.array(labels), np.array(scores)))


def describer_accuracy(describer, composites) -> dict[str, float]:
    """Fraction of composites whose first description names the true word, per side and list, and the object."""
    hits = {}
    for made in composites:
        best = describer.describe(made.composite, made.mask, n=1)[0]
        checks = {"object": best.object == made.scene.obj}
        for i, name in enumerate(("brightness", "temperature", "time")):
            checks[f"foreground {name}"] = best.foreground[i] == made.fg.words[i]
            checks[f"background {name}"] = best.background[i] == made.bg.words[i]
        for key, ok in checks.items():
            hits.setdefault(key, []).append(ok)
    return {key: float(np.mean(values)) for key, values in hits.items()}
