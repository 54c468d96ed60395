"""`zsharm train-evaluator`: train the harmony evaluator (stage 3)."""

import argparse
import math
from pathlib import Path

from zsharm.decide.evaluator import ARCHS, SIZE
from zsharm.decide.training import train_evaluator


def register(subparsers) -> None:
    """Add `zsharm train-evaluator`."""
    parser = subparsers.add_parser(
        "train-evaluator", help="train the harmony evaluator (stage 3)",
        description="Train the two-class harmony evaluator on an iHarmony4-layout folder (composite_images/, "
                    "masks/, real_images/) or, with --synthetic, on composites made on the fly from any photos "
                    "and masks. Saves the best epoch (validation ROC-AUC) as safetensors, metrics beside it.")
    parser.add_argument("data", type=Path, metavar="DATA", help="training folder")
    parser.add_argument("--out", type=Path, required=True, metavar="CKPT.safetensors", help="checkpoint to write")
    parser.add_argument("--synthetic", action="store_true", help="perturb the foregrounds of real photos on the fly")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of photos held out (default 0.1)")
    parser.add_argument("--size", type=int, default=SIZE, help=f"input size (the authors': {SIZE})")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N photos")
    parser.add_argument("--device", default=None, help="cuda, cpu, mps (default: the best available)")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="resnet50",
                        help="network size (default: the authors' resnet50; tiny and small train fast)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--init", type=Path, default=None, metavar="CKPT",
                        help="start from an evaluator or a torchvision-layout ResNet checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_train_command)


def _train_command(args: argparse.Namespace) -> int:
    metrics = train_evaluator(args.data, args.out, synthetic=args.synthetic, epochs=args.epochs,
                              batch_size=args.batch_size, val_fraction=args.val_fraction, size=args.size,
                              limit=args.limit, device=args.device, arch=args.arch, lr=args.lr, seed=args.seed,
                              workers=args.workers, init=args.init, progress=not args.quiet)
    best = metrics.get("best", {})
    scores = [f"{name} {best[key]:.3f}" for key, name in (("val_accuracy", "val accuracy"), ("val_auc", "ROC-AUC"))
              if isinstance(best.get(key), float) and math.isfinite(best[key])]
    print(f"saved {args.out} (epoch {metrics['best_epoch']}" + "".join(", " + s for s in scores) + ")")
    return 0
