"""Checking zsharm's `paper` schedule against what the authors' implementation computed.

`tests/authors_reference/` holds the authors' arrays and losses for one iteration on two tiny SD-2-shaped models,
and the models themselves, compactly (`pack_reference`; `reference_models` turns them back into ordinary
diffusers folders). `save_intermediates` writes zsharm's own arrays in the same format, and `compare` walks the
stages in order, so the first stage that departs is the one named.

Tolerances come from float32 arithmetic, measured, not fitted. The two implementations run the same operations
with different library versions (diffusers 0.9 vs current, transformers 4.30 vs current), whose kernels round
in different orders. How large such rounding differences can grow was measured by running zsharm's `paper`
schedule in float64 on the strong case (UNet output x0.1, which amplifies them most) and comparing the authors'
float32 arrays with it: float32 itself departs from exact arithmetic by 5.6e-6 (inverted latents), 5.2e-5
(refined embeddings), 1.4e-4 (refinement latents), 1.7e-3 (null embeddings), 1.8e-4 (null-text latents) and
1.4e-4 (editing latents). Each tolerance below is about a third of that: zsharm's float32 must agree with the
authors' float32 three times better than either agrees with exact arithmetic (it does, by 3-10x: see the
closing note of the faithfulness issue). A difference in the maths is not rounding: switching on PiDiNet
gradients alone (a one-line change) moves the null embeddings by far more.
Images are uint8 by truncation (as the authors'), so a 1e-5 difference can flip a pixel by one grey level; a
difference in the maths moves many pixels by many levels.
"""

import gzip
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zsharm.edit.diffusion import CallCounter

# (stage, array key, absolute tolerance) in the order the pipeline computes them
ARRAY_STAGES = [
    ("DDIM inversion", "inversion_latents", 2e-6),
    ("text-embedding refinement", "refined_text_embeddings", 2e-5),
    ("text-embedding refinement", "text_opt_step_latents", 4e-5),
    ("null-text optimisation", "optimized_uncond_embeddings", 5e-4),
    ("null-text optimisation", "nulltext_step_latents", 5e-5),
    ("Prompt-to-Prompt editing", "p2p_step_latents", 5e-5),
]
IMAGE_STAGES = [
    ("null-text optimisation", "nulltext_recon"),
    ("Prompt-to-Prompt editing", "p2p_out"),
    ("blending", "blend"),
]
LOSS_STAGES = [
    ("text-embedding refinement", "text_opt", ("attn_fg", "attn_bg", "loss_emb", "loss_reg")),
    ("null-text optimisation", "nulltext", ("null_text_mse", "sobel_mse", "pidinet_edge_mse", "total")),
]
LOSS_RTOL = 1e-4      # relative, on loss values of 1e-6 .. 1
IMAGE_MAX_LEVELS = 1  # grey levels
IMAGE_MAX_FRACTION = 1e-3  # of pixels allowed to differ by that one level


def intermediates(result) -> dict:
    """The arrays of one IterationResult, named as in the reference fixture."""
    stack = lambda xs: torch.stack([x.detach().float().cpu() for x in xs]).numpy()
    arrays = dict(
        inversion_latents=stack(result.inversion.latents),
        inversion_x_t=result.inversion.x_t.detach().cpu().numpy(),
        timesteps=result.inversion.timesteps.cpu().numpy(),
        nulltext_step_latents=stack(result.nulltext.latents),
        optimized_uncond_embeddings=stack(result.nulltext.uncond),
        p2p_step_latents=stack(result.edit.latents),
        nulltext_recon=result.nulltext.reconstruction[None],
        p2p_out=result.edit.images,
        blend=np.asarray(result.work_image),
    )
    if result.refinement is not None:
        arrays["refined_text_embeddings"] = stack(result.refinement.embeddings)
        arrays["text_opt_step_latents"] = stack(result.refinement.latents)
    losses = dict(text_opt=result.refinement.losses if result.refinement else [], nulltext=result.nulltext.losses)
    return arrays, losses


def save_intermediates(result, path):
    """Write the arrays (npz) and, beside them, the losses (json) of one iteration."""
    arrays, losses = intermediates(result)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    path.with_suffix(".losses.json").write_text(json.dumps(losses, indent=1))
    path.with_suffix(".counts.json").write_text(json.dumps(result.counts.table(), indent=1))


def authors_counts(stats: dict) -> CallCounter:
    """The reference's call counts (stats.json) in zsharm's counter keys: UNet calls and image evaluations per
    stage (their editing runs with autograd on but nothing requiring gradients: no-gradient work)."""
    out = {}
    for stage, ours in (("inversion", "inversion"), ("text_opt", "refinement"), ("nulltext", "nulltext"),
                        ("p2p", "editing")):
        for key, n in stats["unet_calls_by_stage"][stage].items():
            fields = dict(part.split("=") for part in key.split("|"))
            grad = "grad" if fields["grad"] == "True" and fields["ctx_requires_grad"] == "True" else "nograd"
            out[f"{ours}/unet/{grad}"] = out.get(f"{ours}/unet/{grad}", 0) + n
            out[f"{ours}/unet_images/{grad}"] = out.get(f"{ours}/unet_images/{grad}", 0) + n * int(fields["batch"])
    for key, n in stats["vae_decode_by_stage"]["nulltext"].items():
        grad = "grad" if "z_requires_grad=True" in key else "nograd"
        out[f"nulltext/vae_decode/{grad}"] = out.get(f"nulltext/vae_decode/{grad}", 0) + n
    out["nulltext/pidinet/nograd"] = sum(stats["pidinet_by_stage"]["nulltext"].values())
    return CallCounter.from_table(out)


def load_intermediates(path):
    path = Path(path)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    losses_path = path.with_suffix(".losses.json") if path.suffix == ".npz" else path.parent / "losses.json"
    if not losses_path.is_file():
        losses_path = path.parent / "losses.json"
    return arrays, json.loads(losses_path.read_text())


@dataclass
class StageCheck:
    stage: str
    what: str
    difference: float   # the largest absolute difference (images: grey levels)
    tolerance: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.difference <= self.tolerance)

    def __str__(self):
        mark = "ok " if self.ok else "FAIL"
        return f"{mark} {self.stage:28s} {self.what:30s} max|diff| {self.difference:.3g} (tolerance {self.tolerance:g}) {self.detail}"


def compare(ours, golden) -> list:
    """Stage-by-stage checks of (arrays, losses) against the reference's (arrays, losses), in pipeline order."""
    (a, la), (g, lg) = ours, golden
    checks = []
    for stage, key, tol in ARRAY_STAGES:
        x, y = np.asarray(a[key], np.float64), np.asarray(g[key], np.float64)
        if x.shape != y.shape:
            checks.append(StageCheck(stage, key, float("inf"), tol, f"shape {x.shape} vs {y.shape}"))
            continue
        checks.append(StageCheck(stage, key, float(np.abs(x - y).max()), tol))
    for stage, key, fields in LOSS_STAGES:
        if len(la[key]) != len(lg[key]):
            checks.append(StageCheck(stage, f"{key} losses", float("inf"), LOSS_RTOL,
                                     f"{len(la[key])} vs {len(lg[key])} values"))
            continue
        worst = max((abs(p[f] - q[f]) / max(abs(q[f]), 1e-12) for p, q in zip(la[key], lg[key])
                     for f in fields if f in q), default=0.0)
        checks.append(StageCheck(stage, f"{key} losses (relative)", worst, LOSS_RTOL))
    for stage, key in IMAGE_STAGES:
        x, y = np.asarray(a[key], np.int16), np.asarray(g[key], np.int16)
        x = x.reshape(y.shape) if x.size == y.size else x
        if x.shape != y.shape:
            checks.append(StageCheck(stage, key, float("inf"), IMAGE_MAX_LEVELS, f"shape {x.shape} vs {y.shape}"))
            continue
        diff = np.abs(x - y)
        fraction = float((diff > 0).mean())
        worst = float(diff.max()) if fraction <= IMAGE_MAX_FRACTION else float("inf")
        checks.append(StageCheck(stage, key, worst, IMAGE_MAX_LEVELS,
                                 f"{fraction:.2e} of values differ (allowed {IMAGE_MAX_FRACTION:g})"))
    return checks


def first_departure(checks):
    return next((c for c in checks if not c.ok), None)


# --- the fixture, stored compactly ---------------------------------------------------------------------------
# Two diffusers folders that differ only in the UNet's output layer are stored as one set of components
# (float32 arrays in .npz, exact; configs and the tokenizer as they were) plus the strong UNet's differing tensors.
MODELS = {"tiny_sd2": None, "tiny_sd2_strong": "unet_strong_delta.npz"}
COMPONENTS = {"text_encoder": "model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
              "unet": "diffusion_pytorch_model.safetensors"}
CONFIG_FILES = ("model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                "unet/config.json", "vae/config.json", "tokenizer/tokenizer_config.json")
COMPARED_ARRAYS = tuple(key for _, key, _ in ARRAY_STAGES) + tuple(key for _, key in IMAGE_STAGES)


def pack_reference(source, dest):
    """Write the compact fixture `dest` from a full reference folder `source` (the authors' outputs as written:
    tiny_sd2/, tiny_sd2_strong/, inputs/, golden_*/). Golden arrays keep only what `compare` reads."""
    from safetensors.numpy import load_file
    source, dest = Path(source), Path(dest)
    models = dest / "models"
    (models / "tokenizer").mkdir(parents=True, exist_ok=True)
    base = source / "tiny_sd2"
    for name in CONFIG_FILES:
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base / name, models / name)
        if (source / "tiny_sd2_strong" / name).read_bytes() != (base / name).read_bytes():
            raise ValueError(f"the two models' {name} differ; this packing assumes they do not")
    (models / "tokenizer" / "tokenizer.json.gz").write_bytes(
        gzip.compress((base / "tokenizer" / "tokenizer.json").read_bytes(), mtime=0))
    for component, file in COMPONENTS.items():
        tensors = load_file(str(base / component / file))
        np.savez_compressed(models / f"{component}.npz", **tensors)
        strong = load_file(str(source / "tiny_sd2_strong" / component / file))
        delta = {k: v for k, v in strong.items() if not np.array_equal(v, tensors[k])}
        if delta and component != "unet":
            raise ValueError(f"the two models' {component} differ; this packing assumes only the UNet does")
        if component == "unet":
            np.savez_compressed(models / MODELS["tiny_sd2_strong"], **delta)
    shutil.copytree(source / "inputs", dest / "inputs", dirs_exist_ok=True)
    for golden in sorted(source.glob("golden_*")):
        (dest / golden.name).mkdir(parents=True, exist_ok=True)
        with np.load(golden / "arrays.npz") as data:
            np.savez_compressed(dest / golden.name / "arrays.npz", **{k: data[k] for k in COMPARED_ARRAYS})
        for name in ("losses.json", "stats.json"):
            shutil.copyfile(golden / name, dest / golden.name / name)
    return dest


def reference_models(fixture, out) -> dict:
    """{name: diffusers folder} for the fixture's two models, written once under `out` (safetensors), so that they
    load through `from_pretrained` like any checkpoint. A folder is rebuilt when the fixture's files change."""
    from safetensors.numpy import save_file
    models = Path(fixture) / "models"
    digest = hashlib.sha256()
    for path in sorted(models.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    folders = {}
    for name, delta_file in MODELS.items():
        folder = Path(out) / f"{name}-{digest.hexdigest()[:12]}"
        folders[name] = folder
        if (folder / "model_index.json").is_file():
            continue
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        for config in CONFIG_FILES:
            (tmp / config).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(models / config, tmp / config)
        (tmp / "tokenizer" / "tokenizer.json").write_bytes(
            gzip.decompress((models / "tokenizer" / "tokenizer.json.gz").read_bytes()))
        for component, file in COMPONENTS.items():
            with np.load(models / f"{component}.npz") as data:
                tensors = {k: data[k] for k in data.files}
            if component == "unet" and delta_file is not None:
                with np.load(models / delta_file) as data:
                    tensors.update({k: data[k] for k in data.files})
            save_file(tensors, str(tmp / component / file), metadata={"format": "pt"})
        if folder.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    return folders
