"""`zsharm figures`: the paper-style figures drawn into a folder (zsharm.teaching.figures)."""

from zsharm.commands.options import add_stage2_options, config_from_options
from zsharm.teaching.figures import FIGURES, make_figures


def register(subparsers):
    p = subparsers.add_parser("figures", help="draw the paper-style figures into a folder",
                              description="Draw the paper-style figures. Without --model only those that need no "
                                          "diffusion weights: " + ", ".join(n for n, (_, m) in FIGURES.items()
                                                                            if not m) + ".")
    p.add_argument("--out", default="figures", help="folder to write the PNGs to (default: figures)")
    p.add_argument("--only", help=f"comma-separated figure names ({', '.join(FIGURES)})")
    p.add_argument("--iterations", type=int, default=1, help="harmonization iterations per image (default 1)")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    add_stage2_options(p, model_default=None, model_help="diffusion model (hub id, folder, file or tiny); adds the "
                                                         "figures that run the method")
    p.set_defaults(func=cli_figures)


def cli_figures(args) -> int:
    import matplotlib
    matplotlib.use("Agg")  # files only: no window, whatever the environment
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    make_figures(args.out, model=args.model, only=only, config=config_from_options(args), iterations=args.iterations,
                 device=args.device, dtype=args.dtype, progress=not args.quiet)
    return 0
