"""Stage 1 in the toy world: a describer that names the object and the imaging conditions of foreground and
background in dictionary words, from measured statistics instead of a vision-language model.

Per region (the object inside the mask; the sky and the ground outside it) it measures colour in linear light,
the brightest tenth (a highlight's strength depends on the light alone, not on the object's paint) and where the
light falls (left-right and top-bottom balance); one softmax regression per word list (brightness, temperature,
time) and side, fitted on harmonious training scenes (`fit`, run by zsharm/toy_lab/train.py), turns them into
probabilities. The object's name comes from the mask's shape in the same way. Candidates are the word
combinations in order of probability, so Regenerate gets the next most likely description.
"""

import itertools

import numpy as np

from zsharm.describe.describers import DescriptionExhaustedError, Describer
from zsharm.describe.description import Description
from zsharm.toy import world

LISTS = {"brightness": tuple(world.BRIGHTNESS), "temperature": tuple(world.TEMPERATURE), "time": tuple(world.TIME)}


def _linear(image_uint8: np.ndarray) -> np.ndarray:
    return (image_uint8.astype(np.float32) / 255) ** 2.2


def _region_stats(linear: np.ndarray, region: np.ndarray) -> list[float]:
    pixels = linear[region]
    if len(pixels) == 0:
        return [0.0] * 7
    mean = pixels.mean(0) + 1e-4
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    lum = luminance[region]
    ys, xs = np.nonzero(region)
    cx, cy = xs.mean(), ys.mean()
    total = lum.mean() + 1e-4
    right = lum[xs >= cx].mean() if (xs >= cx).any() else total
    left = lum[xs < cx].mean() if (xs < cx).any() else total
    top = lum[ys < cy].mean() if (ys < cy).any() else total
    bottom = lum[ys >= cy].mean() if (ys >= cy).any() else total
    return [*np.log(mean), float(np.log(np.percentile(lum, 90) + 1e-4)), float(np.log(mean[0] / mean[2])),
            float((right - left) / total), float((top - bottom) / total)][:7]


def foreground_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.array(_region_stats(_linear(image), mask), np.float32)


def background_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    linear = _linear(image)
    h = mask.shape[0]
    rows = np.arange(h)[:, None]
    sky = (rows < h * 0.3) & ~mask
    ground = (rows > h * 0.6) & ~mask
    return np.array(_region_stats(linear, sky) + _region_stats(linear, ground), np.float32)


def shape_features(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = mask[top:bottom, left:right].astype(np.float32)
    h, w = box.shape
    quarters = [box[i * h // 4:(i + 1) * h // 4].mean() if h >= 4 else box.mean() for i in range(4)]
    halves = [box[:, : w // 2].mean(), box[:, w // 2:].mean()] if w >= 2 else [box.mean()] * 2
    return np.array([np.log(h / w), box.mean(), *quarters, halves[1] - halves[0]], np.float32)


# -------------------------------------------------------------------------------------------- the model

def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_softmax(x: np.ndarray, labels: np.ndarray, classes: int, steps: int = 800, lr: float = 0.5,
                l2: float = 1e-3) -> dict:
    """Multinomial logistic regression by gradient descent on standardised features (deterministic)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    weights = np.zeros((z.shape[1], classes), np.float64)
    bias = np.zeros(classes)
    onehot = np.eye(classes)[labels]
    for _ in range(steps):
        p = _softmax(z @ weights + bias)
        grad = (p - onehot) / len(z)
        weights -= lr * (z.T @ grad + l2 * weights)
        bias -= lr * grad.sum(0)
    return {"mean": mean.tolist(), "std": std.tolist(), "weights": weights.tolist(), "bias": bias.tolist()}


def predict_softmax(model: dict, x: np.ndarray) -> np.ndarray:
    z = (np.atleast_2d(x) - np.asarray(model["mean"])) / np.asarray(model["std"])
    return _softmax(z @ np.asarray(model["weights"]) + np.asarray(model["bias"]))


def fit(images: np.ndarray, masks: np.ndarray, captions: list[str]) -> dict:
    """The describer's parameters (JSON-ready) from harmonious scenes and their captions `OBJECT b t time`."""
    fg = np.stack([foreground_features(i, m) for i, m in zip(images, masks)])
    bg = np.stack([background_features(i, m) for i, m in zip(images, masks)])
    shapes = np.stack([shape_features(m) for m in masks])
    words = [caption.split() for caption in captions]
    model = {"object": fit_softmax(shapes, np.array([world.OBJECTS.index(w[0]) for w in words]),
                                   len(world.OBJECTS)), "foreground": {}, "background": {}}
    for position, (name, options) in enumerate(LISTS.items(), start=1):
        labels = np.array([options.index(w[position]) for w in words])
        model["foreground"][name] = fit_softmax(fg, labels, len(options))
        model["background"][name] = fit_softmax(bg, labels, len(options))
    return model


class ToyDescriber(Describer):
    """Descriptions of a toy composite, most probable first (`model`: what `fit` returned)."""

    name = "toy"

    def __init__(self, model: dict):
        self.model = model

    @classmethod
    def from_file(cls, path) -> "ToyDescriber":
        import json
        from pathlib import Path
        return cls(json.loads(Path(path).read_text()))

    def probabilities(self, image, mask) -> dict:
        """{"object": {name: p}, "foreground": {list: {word: p}}, "background": {list: {word: p}}}."""
        image = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        mask = np.asarray(mask).astype(bool)
        out = {"object": dict(zip(world.OBJECTS, predict_softmax(self.model["object"], shape_features(mask))[0]))}
        features = {"foreground": foreground_features(image, mask), "background": background_features(image, mask)}
        for side, x in features.items():
            out[side] = {name: dict(zip(options, predict_softmax(self.model[side][name], x)[0]))
                         for name, options in LISTS.items()}
        return out

    def ranked(self, image, mask) -> list[Description]:
        p = self.probabilities(image, mask)
        obj = max(p["object"], key=p["object"].get)
        sides = []
        for side in ("foreground", "background"):
            combos = [(float(np.prod([p[side][n][w] for n, w in zip(LISTS, words)])), words)
                      for words in itertools.product(*LISTS.values())]
            sides.append(combos)
        pairs = [(pf * pb, Description(obj, wf, wb)) for (pf, wf), (pb, wb) in itertools.product(*sides)]
        pairs.sort(key=lambda item: -item[0])
        return [description for _, description in pairs]

    def describe(self, image, mask, n: int = 2, exclude=(), name: str | None = None) -> list[Description]:
        tried = [_words(e) for e in exclude]
        fresh = [d for d in self.ranked(image, mask) if d.words not in tried]
        if not fresh:
            raise DescriptionExhaustedError(f"{name or 'image'}: every toy description was tried")
        return fresh[:n]


def _words(item) -> tuple:
    if isinstance(item, Description):
        return item.words
    source, target = (item.source, item.target) if hasattr(item, "source") else item
    return Description.from_prompts(source, target).words
