"""`zsharm ablate`: each fast-schedule switch alone against paper (zsharm.repro.switches)."""

import torch

from zsharm.config import HarmonizeConfig
from zsharm.errors import ZsharmError
from zsharm.repro.switches import ablate, markdown


def register(subparsers):
    p = subparsers.add_parser(
        "ablate", help="each fast-schedule switch alone: model work, time and distance from paper's output",
        description="Run paper, paper + each fast switch, fast, and fast - each switch on one composite, and "
                    "print a markdown table: UNet image evaluations, seconds, fPSNR against paper's output.")
    p.add_argument("--model", default="tiny-tamed", help="any model zsharm harmonize takes (default tiny-tamed)")
    p.add_argument("--image", help="composite (default: the demo composite zsharm ships)")
    p.add_argument("--mask", help="its mask (default: the demo's)")
    p.add_argument("--source", default="astronaut bright warm indoor")
    p.add_argument("--target", default="astronaut dim blue twilight")
    p.add_argument("--size", type=int, default=512, help="long side of the work size (512)")
    p.add_argument("--steps", type=int, help="one step count for both schedules (default: each schedule's own)")
    p.add_argument("--device", help="cuda, cpu, mps (default: the best available)")
    p.add_argument("--rows", help="comma list of row names to run beside paper (default: all)")
    p.add_argument("--threads", type=int, help="CPU threads torch may use")
    p.add_argument("--out", help="also write the table to this markdown file")
    p.set_defaults(func=cli_ablate)


def cli_ablate(args) -> int:
    from pathlib import Path

    from zsharm.demo import demo_folder
    if args.image is None:
        demo = demo_folder()
        args.image, args.mask = demo / "composite.png", args.mask or demo / "mask.png"
    if args.mask is None:
        raise ZsharmError("--image needs its --mask")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        HarmonizeConfig(size=args.size, steps=args.steps or 50)
    except ValueError as exc:
        raise ZsharmError(str(exc)) from None
    only = [s.strip() for s in args.rows.split(",")] if args.rows else None
    rows = ablate(args.model, args.image, args.mask, args.source, args.target, size=args.size, steps=args.steps,
                  device=args.device, only=only)
    table = markdown(rows)
    print(table)
    if args.out:
        from zsharm.io.files import write_bytes_atomic
        write_bytes_atomic(Path(args.out), table.encode("utf-8"))
    return 0
