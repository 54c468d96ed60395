"""How much the evaluator's score moves between zsharm's `fast` scoring (the blend in memory) and the authors'
(`paper`: the blend saved as a quality-75 JPEG and re-read), on the demo composite.

    python benchmarks/evaluator_scoring.py                      # the authors' evaluator if cached/fetchable
    python benchmarks/evaluator_scoring.py --evaluator random   # offline: a random ResNet-50, head re-aimed

Prints the difference of the network's input (the normalised 256x256 image) and of the score, for the image at
the authors' 512x512 and at zsharm's aspect-keeping work size. A random network's raw softmax is saturated
(scores ~1e-20 apart), so offline its head is re-aimed to spread photo scores over (0, 1): the numbers then show
the size of the effect through a ResNet-50, not the authors' network's.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zsharm.decide.evaluator import (HarmonyClassifier, jpeg_round_trip, load_evaluator, preprocess,  # noqa: E402
                                     read_mask_as_authors)
from zsharm.errors import ZsharmError  # noqa: E402
from zsharm.io.pictures import work_size  # noqa: E402


def reaimed_random(images, masks):
    """A seeded random ResNet-50 whose head is orthogonal to the mean feature of `images`, unit logit spread."""
    from zsharm.decide.evaluator import Evaluator
    torch.manual_seed(0)
    model = HarmonyClassifier.from_arch("resnet50").eval()
    with torch.no_grad():
        batch = [preprocess(i, m) for i, m in zip(images, masks)]
        x, m = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        features = torch.flatten(model.avgpool(model.encoder(model.inp_encoder(torch.cat([x, m], 1)))), 1)
        mean = features.mean(0)
        w = torch.randn(features.shape[1], generator=torch.Generator().manual_seed(1))
        w = w - (w @ mean) / (mean @ mean) * mean
        w = w / ((features - mean) @ w).std()
        model.classify_fc.weight.copy_(torch.stack([-w / 2, w / 2]))
        model.classify_fc.bias.copy_(torch.stack([mean @ w / 2, -mean @ w / 2]))
    return Evaluator(model, "cpu", name="random ResNet-50, head re-aimed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluator", default="authors", help="authors (default), a checkpoint, or random")
    parser.add_argument("--data", default=str(REPO / "data" / "demo"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    composite = Image.open(Path(args.data) / "composite.png").convert("RGB")
    soft = read_mask_as_authors(Path(args.data) / "mask.png")
    sizes = {"authors 512x512": (512, 512), f"zsharm work size {work_size(composite.size)}": work_size(composite.size)}
    images = {name: composite.resize(wh, Image.LANCZOS) for name, wh in sizes.items()}
    if args.evaluator == "random":
        extra = [Image.fromarray(np.asarray(composite)[::-1].copy()), composite.rotate(180)]
        evaluator = reaimed_random(list(images.values()) + extra, [soft] * (len(images) + len(extra)))
    else:
        try:
            evaluator = load_evaluator(args.evaluator, "cpu")
        except ZsharmError as error:
            sys.exit(f"{error}\n(offline: --evaluator random)")
    print(f"evaluator: {evaluator.name}")
    print("| image | mean abs input diff | max abs input diff | score in memory | score saved+re-read | diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, image in images.items():
        x_memory, _ = preprocess(image, soft)
        x_saved, _ = preprocess(jpeg_round_trip(image), soft)
        delta = (x_memory - x_saved).abs()
        memory, saved = evaluator.score(image, soft), evaluator.score_saved(image, soft)
        print(f"| {name} | {delta.mean():.5f} | {delta.max():.4f} | {memory:.5f} | {saved:.5f} | "
              f"{saved - memory:+.5f} |")


if __name__ == "__main__":
    main()
