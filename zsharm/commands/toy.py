"""`zsharm toy`: the toy world (zsharm/toy/): train its models (zsharm/toy_lab/), or write its composites with ground
truth."""

from pathlib import Path

from zsharm.errors import ZsharmError


def register(subparsers):
    p = subparsers.add_parser("toy", help="the toy world: train its prior, evaluator and describer, or write data",
                              description="The toy world: a small Stable-Diffusion-shaped prior trained on "
                                          "synthetic shapes (not SD 2), with its own evaluator and describer.")
    sub = p.add_subparsers(dest="toy_command", metavar="WHAT", required=True)
    t = sub.add_parser("train", help="train every part, seeded and resumable (about 2 h on 2 CPU cores)")
    t.add_argument("--work", required=True, help="folder for data and checkpoints (rerun to resume)")
    t.add_argument("--parts", default=None,
                   help="comma-separated parts in order (default all: data,vae,latents,unet,composites,"
                        "evaluator,describer); two processes can share the work, see zsharm/toy_lab/train.py")
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one per process)")
    t.add_argument("--export", metavar="FOLDER", help="then write the shipped folder (e.g. zsharm/assets/toy)")
    t.set_defaults(func=cli_train)
    d = sub.add_parser("data", help="write composites, masks and ground truth in iHarmony4's layout")
    d.add_argument("out", help="folder to write (its name names the split list: OUT/<name>_<split>.txt)")
    d.add_argument("--count", type=int, default=32, help="how many composites (default 32)")
    d.add_argument("--split", choices=["test", "train"], default="test",
                   help="test: the held-out seeds nothing trains on (default); train: the evaluator's")
    d.set_defaults(func=cli_data)


def cli_train(args) -> int:
    import torch

    from zsharm.toy_lab.train import PARTS, train
    parts = PARTS if args.parts is None else tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ZsharmError(f"--parts: unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    if args.threads < 1:
        raise ZsharmError(f"--threads {args.threads}: at least 1")
    torch.set_num_threads(args.threads)
    train(args.work, parts, args.device, args.export)
    return 0


def cli_data(args) -> int:
    from zsharm.toy import world
    from zsharm.toy_lab.train import write_composites
    if args.count < 1:
        raise ZsharmError(f"--count {args.count}: at least 1")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ZsharmError(f"{out} is not empty; name a new folder")
    seeds = world.HELD_OUT_SEEDS if args.split == "test" else world.TRAIN_SEEDS[500_000:]
    write_composites(out, [seeds[i] for i in range(args.count)], args.split)
    print(f"{args.count} composites in {out}")
    return 0
