"""What the trained toy prior does, on held-out toy composites (the seeds of data/toy), as a table:

    python benchmarks/toy_prior.py                 # prints it and writes benchmarks/toy_prior.md
    python benchmarks/toy_prior.py --count 8       # fewer composites (the tests use 8)

Each figure is the mean over the composites; the thresholds are issue #20's, kept as tests in
tests/test_toy_prior.py. Runs on one CPU thread in a few minutes.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from zsharm.decide.evaluator import load_evaluator
from zsharm.models import load_pipeline, model_companions
from zsharm.toy_lab import measure
from zsharm.describe.toy import ToyDescriber


def rows(count: int) -> list[tuple[str, str, str]]:
    composites = measure.held_out(count)
    config = measure.toy_config()
    toy = load_pipeline("toy", device="cpu", dtype=torch.float32, progress=False)
    tiny = load_pipeline("tiny", device="cpu", dtype=torch.float32, progress=False)
    companions = model_companions("toy")
    out = []
    start = time.perf_counter()
    round_trip = np.mean(measure.round_trip_psnr(toy, composites, config))
    out.append(("VAE round trip PSNR (dB)", f"{round_trip:.2f}", ">= 28"))
    from zsharm.config import HarmonizeConfig
    for name, cfg in (("paper", HarmonizeConfig.paper(**model_companions("toy")["config"])), ("fast", config)):
        rec = measure.reconstruction_psnr(toy, composites, cfg)
        nulltext, ddim = np.mean(rec["null-text"]), np.mean(rec["ddim"])
        out.append((f"null-text inversion ({name} schedule), reconstruction PSNR (dB)", f"{nulltext:.2f}",
                    f">= {round_trip - 1:.2f} (round trip - 1)" if name == "paper" else "(the fast schedule's price)"))
        out.append((f"DDIM inversion alone ({name} schedule), guided reconstruction PSNR (dB)", f"{ddim:.2f}",
                    "below null-text"))
    iou = np.mean(measure.object_attention_iou(toy, composites, config))
    iou_tiny = np.mean(measure.object_attention_iou(tiny, composites, config))
    out.append(("object word's cross-attention vs mask, mean IoU", f"{iou:.3f}", ">= 0.5"))
    out.append(("  the same on the tiny random model", f"{iou_tiny:.3f}", "(for comparison)"))
    auc = measure.evaluator_auc(load_evaluator(companions["evaluator"], device="cpu"), composites)
    out.append(("evaluator ROC AUC, truth vs composite", f"{auc:.3f}", ">= 0.9"))
    accuracy = measure.describer_accuracy(ToyDescriber.from_file(companions["describer"]), composites)
    for key in ("foreground brightness", "background brightness", "foreground temperature",
                "background temperature", "foreground time", "background time", "object"):
        out.append((f"describer accuracy, {key}", f"{accuracy[key]:.3f}",
                    ">= 0.8" if "brightness" in key else ""))
    out.append(("seconds for all of the above (one thread)", f"{time.perf_counter() - start:.0f}", ""))
    return out


def markdown(table, count: int) -> str:
    lines = [f"# The toy prior on {count} held-out composites", "",
             "Made by `python benchmarks/toy_prior.py --count " f"{count}` (one CPU thread). Thresholds: issue #20; "
             "tests/test_toy_prior.py keeps them.", "", "| figure | measured | threshold |", "|---|---:|---|"]
    lines += [f"| {name} | {value} | {threshold} |" for name, value, threshold in table]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--out", default=str(Path(__file__).with_name("toy_prior.md")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    text = markdown(rows(args.count), args.count)
    print(text, end="")
    Path(args.out).write_text(text)
