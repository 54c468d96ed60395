"""Stage 3, training: `zsharm train-evaluator` trains the harmony evaluator on iHarmony4 or on composites
made on the fly from any photos and masks (the authors did not publish how they trained theirs)."""


import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from zsharm.decide.evaluator import (
    SIZE,
    HarmonyClassifier,
    load_init,
    preprocess,
    save_checkpoint,
)
from zsharm.errors import ZsharmError
from zsharm.io.files import check_writable, write_json
from zsharm.io.folders import IMAGE_EXTENSIONS
from zsharm.io.masks import load_mask
from zsharm.io.pictures import load_image
from zsharm.models import move_to_device, resolve_device

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- training data


@dataclass(frozen=True)
class TrainingExample:
    """One training example: an image, its mask (None: a random one is drawn), the label (1 = real,
    0 = composite), whether the foreground is to be perturbed on the fly, and the photo it comes from
    (the validation split never separates samples of one photo)."""

    image: Path
    mask: Path | None
    label: int
    perturb: bool
    group: str


def find_iharmony_samples(root, split: str | None = "train") -> list[TrainingExample]:
    """Composites (label 0) and their real images (label 1) from an iHarmony4-layout folder: one or more
    subsets each holding composite_images/, masks/ and real_images/, named as `a0001_1_2.jpg` (composite),
    `a0001_1.png` (mask), `a0001.jpg` (real). Where a subset has its `<Subset>_<split>.txt` list, only the
    composites it names are used, so an evaluator trained on the train split never sees the test images."""
    root = Path(root)
    subsets = sorted({p.parent for p in root.rglob("composite_images") if p.is_dir()} |
                     ({root} if (root / "composite_images").is_dir() else set()))
    samples = []
    for subset in subsets:
        masks = _by_stem(subset / "masks")
        reals = _by_stem(subset / "real_images")
        listed = subset / f"{subset.name}_{split}.txt"
        keep = None
        if split and listed.is_file():
            keep = {Path(line.strip()).name for line in listed.read_text().splitlines() if line.strip()}
        for composite in sorted(_by_stem(subset / "composite_images").values()):
            if keep is not None and composite.name not in keep:
                continue
            mask_stem = composite.stem.rsplit("_", 1)[0]
            real_stem = mask_stem.rsplit("_", 1)[0]
            if mask_stem in masks and real_stem in reals:
                group = f"{subset.name}/{real_stem}"
                samples.append(TrainingExample(composite, masks[mask_stem], 0, False, group))
                samples.append(TrainingExample(reals[real_stem], masks[mask_stem], 1, False, group))
    return samples


def find_photo_samples(root) -> list[TrainingExample]:
    """Photos and masks for synthetic composites: an iHarmony4 folder's real images and masks, a plain
    folder of pairs (x.png + x_mask.png, or images/ + masks/), or photos alone (random masks are drawn).
    Each photo gives a real sample (label 1) and a perturbed one (label 0)."""
    root = Path(root)
    pairs = []
    if any(True for _ in root.rglob("composite_images")) or (root / "real_images").is_dir():
        for sample in find_iharmony_samples(root):
            if sample.label == 1:
                pairs.append((sample.image, sample.mask))
        if not pairs:  # real_images without composites: use every mask of every real image
            for subset in sorted({p.parent for p in root.rglob("real_images") if p.is_dir()}):
                reals = _by_stem(subset / "real_images")
                for mask in sorted(_by_stem(subset / "masks").values()):
                    real = reals.get(mask.stem.rsplit("_", 1)[0])
                    if real is not None:
                        pairs.append((real, mask))
    else:
        from zsharm.batch import find_batch_items

        try:
            pairs = [(item.composite, item.mask) for item in find_batch_items(root, read_captions=False)]
        except ZsharmError:
            pairs = []
    samples = []
    for image, mask in pairs:
        group = str(image.relative_to(root)) + ("" if mask is None else "|" + mask.name)
        samples.append(TrainingExample(image, mask, 1, False, group))
        samples.append(TrainingExample(image, mask, 0, True, group))
    return samples


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def split_samples(samples: list[TrainingExample], val_fraction: float, seed: int = 0) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """Split by photo (group), seeded: at least one group in each part when there are two or more."""
    groups = sorted({s.group for s in samples})
    order = np.random.default_rng(seed).permutation(len(groups))
    n_val = int(round(val_fraction * len(groups)))
    if val_fraction > 0 and len(groups) >= 2:
        n_val = min(max(n_val, 1), len(groups) - 1)
    val_groups = {groups[i] for i in order[:n_val]}
    return [s for s in samples if s.group not in val_groups], [s for s in samples if s.group in val_groups]


def perturb_foreground(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A synthetic composite: the masked region's white balance, exposure, tone curve, saturation, hue and
    contrast changed at random (each with probability 1/2, at least one), as iHarmony4's composites were
    made by colour transfer / retouching of the foreground. rgb: uint8 H x W x 3; mask: H x W in [0, 1]."""
    x = rgb.astype(np.float32) / 255
    inside = mask > 0.5
    region = x.copy()
    ops = rng.random(6) < 0.5
    if not ops.any():
        ops[rng.integers(6)] = True
    if ops[0]:  # white balance: per-channel gains with mean 1
        gains = rng.uniform(0.7, 1.3, 3)
        region *= (gains / gains.mean()).astype(np.float32)
    if ops[1]:  # exposure: +-0.3 to 1 stop
        region *= np.float32(2 ** (rng.choice([-1, 1]) * rng.uniform(0.3, 1.0)))
    if ops[2]:  # tone curve: gamma in [1/2, 1/1.25] or [1.25, 2]
        region = np.clip(region, 0, 1) ** np.float32(np.exp(rng.choice([-1, 1]) * rng.uniform(0.22, 0.69)))
    grey = region @ np.array([0.299, 0.587, 0.114], np.float32)
    if ops[3]:  # saturation
        factor = rng.choice([rng.uniform(0.2, 0.7), rng.uniform(1.3, 1.8)])
        region = grey[..., None] + np.float32(factor) * (region - grey[..., None])
    if ops[4]:  # hue: rotate the chroma about the grey axis by 10-45 degrees
        region = region @ _hue_rotation(np.deg2rad(rng.choice([-1, 1]) * rng.uniform(10, 45))).T
    if ops[5]:  # contrast about the region's mean
        centre = region[inside].mean(axis=0) if inside.any() else region.mean(axis=(0, 1))
        factor = rng.choice([rng.uniform(0.5, 0.8), rng.uniform(1.25, 1.6)])
        region = centre + np.float32(factor) * (region - centre)
    weight = np.asarray(mask, np.float32)[..., None]
    out = weight * np.clip(region, 0, 1) + (1 - weight) * x
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)


def _hue_rotation(angle: float) -> np.ndarray:
    axis = np.ones(3) / np.sqrt(3)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.cos(angle) * np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * np.outer(axis, axis)
    return rotation.astype(np.float32)


def random_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An ellipse covering roughly 5-40% of the picture: a stand-in foreground for photos without masks."""
    cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
    ry, rx = rng.uniform(0.15, 0.4) * height, rng.uniform(0.15, 0.4) * width
    yy, xx = np.mgrid[:height, :width]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


class HarmonyDataset(torch.utils.data.Dataset):
    """Samples as the evaluator sees them: (image (3,S,S), mask (1,S,S), label). Training draws fresh
    perturbations and flips each epoch (set `epoch`); validation is the same every time."""

    def __init__(self, samples: list[TrainingExample], size: int, train: bool, seed: int = 0):
        self.samples, self.size, self.train, self.seed = samples, size, train, seed
        self.epoch = 0

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        sample = self.samples[index]
        rng = np.random.default_rng([self.seed, self.epoch + 1 if self.train else 0, index])
        rgb = _read_rgb(sample.image)
        if sample.mask is None:
            # the real and perturbed samples of one photo share their mask: seed it by the photo
            mask = random_mask(*rgb.shape[:2], np.random.default_rng([self.seed, _stable_hash(sample.group)]))
        else:
            mask = _read_mask(sample.mask, rgb.shape[:2])
        if sample.perturb:
            rgb = perturb_foreground(rgb, mask.astype(np.float32), rng)
        if self.train and rng.random() < 0.5:
            rgb, mask = rgb[:, ::-1], mask[:, ::-1]
        x, m = preprocess(np.ascontiguousarray(rgb), np.ascontiguousarray(mask), self.size)
        return x, m, sample.label


def _read_rgb(path: Path) -> np.ndarray:
    return np.asarray(load_image(path).to_pil_rgb8())


def _read_mask(path: Path, shape) -> np.ndarray:
    return load_mask(path, size=(shape[1], shape[0]))  # zsharm.io's one mask reader, its checks included


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:4], "little")


# ---------------------------------------------------------------- training


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties counted half; NaN when one
    class is absent."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def train_evaluator(data, out, synthetic: bool = False, epochs: int = 10, batch_size: int = 32,
                    val_fraction: float = 0.1, size: int = SIZE, limit: int | None = None, device=None,
                    arch: str = "resnet50", lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0,
                    workers: int = 0, init=None, progress: bool = True) -> dict:
    """Train a HarmonyClassifier and save the best epoch (by validation AUC, then accuracy) to `out`
    (.safetensors), with the metrics in `out` + `.json`. Returns those metrics.

    data: an iHarmony4-layout folder (composites vs. real images), or with `synthetic` any folder of photos
    and masks (composites are made on the fly by `perturb_foreground`). limit: use only the first N photos.
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ZsharmError(f"--out must end in .safetensors, got {out}")
    if epochs < 1 or batch_size < 1 or not 0 <= val_fraction < 1 or size < 32:
        raise ZsharmError("train-evaluator needs epochs >= 1, batch size >= 1, 0 <= val fraction < 1, size >= 32")
    check_writable(out)
    data = Path(data)
    if not data.is_dir():
        raise ZsharmError(f"training data {data} is not a folder")
    samples = find_photo_samples(data) if synthetic else find_iharmony_samples(data)
    if not samples:
        kind = "photos (with masks)" if synthetic else "iHarmony4 composites (composite_images/, masks/, real_images/)"
        hint = "" if synthetic else "; use --synthetic for a folder of photos"
        raise ZsharmError(f"no {kind} found in {data}{hint}")
    if limit is not None:
        keep = sorted({s.group for s in samples})[:limit]
        samples = [s for s in samples if s.group in set(keep)]
    train_samples, val_samples = split_samples(samples, val_fraction, seed)

    torch.manual_seed(seed)
    device = resolve_device(device)
    model = HarmonyClassifier.from_arch(arch)
    if init is not None:
        load_init(model, init)
    move_to_device(model, device)
    train_set = HarmonyDataset(train_samples, size, train=True, seed=seed)
    val_set = HarmonyDataset(val_samples, size, train=False, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers,
                                               drop_last=len(train_set) > batch_size, generator=generator)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=batch_size, num_workers=workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(train_loader)))

    metrics = {"data": str(data), "synthetic": synthetic, "arch": arch, "size": size, "epochs": epochs,
               "batch_size": batch_size, "lr": lr, "seed": seed, "train_samples": len(train_samples),
               "val_samples": len(val_samples), "history": [], "best_epoch": None, "checkpoint": str(out)}
    best_key = None
    for epoch in range(epochs):
        train_set.epoch = epoch
        model.train()
        losses, correct, seen = [], 0, 0
        start = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for x, m, y in bar:
            x, m, y = x.to(device), m.to(device), y.to(device)
            logits = model(x, m)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise ZsharmError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "train_accuracy": correct / max(seen, 1),
               "seconds": round(time.perf_counter() - start, 2)}
        if len(val_set):
            row.update(evaluate_classifier(model, val_loader, device, progress))
        metrics["history"].append(row)
        if progress:
            tqdm.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        key = (_finite(row.get("val_auc")), _finite(row.get("val_accuracy")))
        if best_key is None or key > best_key or not len(val_set):
            best_key = key
            metrics["best_epoch"] = epoch + 1
            metrics["best"] = row
            save_checkpoint(model, out, size, arch=arch, epoch=epoch + 1,
                            val_auc=row.get("val_auc"), val_accuracy=row.get("val_accuracy"))
    write_json(out.with_suffix(".json"), _jsonable(metrics))
    best_auc = _finite((metrics.get("best") or {}).get("val_auc"))
    if len(val_set) and -math.inf < best_auc <= 0.5:
        log.warning("the best epoch's validation ROC-AUC is %.3f, no better than chance: %s does not tell "
                    "harmonious images from others (more data, more epochs, or another --lr)", best_auc, out)
    return metrics


@torch.no_grad()
def evaluate_classifier(model: HarmonyClassifier, loader, device, progress: bool = False) -> dict:
    """Validation loss, accuracy (probability >= 0.5 means harmonious) and ROC-AUC of `model` on `loader`."""
    model.eval()
    probs, labels, losses = [], [], []
    for x, m, y in tqdm(loader, desc="validate", disable=not progress, leave=False):
        logits = model(x.to(device), m.to(device)).float()
        losses.append(F.cross_entropy(logits, y.to(device), reduction="sum").item())
        probs.append(torch.softmax(logits, 1)[:, 1].cpu().numpy())
        labels.append(y.numpy())
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    return {"val_loss": float(np.sum(losses) / len(labels)),
            "val_accuracy": float(((probs >= 0.5) == (labels == 1)).mean()),
            "val_auc": roc_auc(labels, probs)}


def _finite(value) -> float:
    return value if value is not None and math.isfinite(value) else -math.inf


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
