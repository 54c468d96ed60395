"""`zsharm evaluate`: harmonization methods measured on a dataset (zsharm.quality)."""

import sys
from pathlib import Path

from zsharm.cache import check_cache
from zsharm.commands.options import add_stage2_options, config_from_options
from zsharm.errors import ZsharmError
from zsharm.io.files import check_writable
from zsharm.quality.baselines import BASELINES
from zsharm.quality.compare import ZSHARM_VARIANTS, evaluate, markdown_table, parse_methods, summarize
from zsharm.quality.datasets import LAYOUTS, load_dataset


def register(subparsers):
    p = subparsers.add_parser(
        "evaluate", help="measure harmonization methods on a dataset (MSE, fMSE, PSNR, fPSNR, SSIM)",
        description="Run harmonization methods over DATASET and write per_image.csv, summary.csv and summary.md "
                    "to --out. Layouts: iHarmony4, the authors' demo folder, RealHM, or name.png + name_mask.png.")
    p.add_argument("dataset", metavar="DATASET", help="the dataset folder")
    p.add_argument("--methods", default="copy-paste,reinhard,histogram,poisson",
                   help=f"comma-separated, from {', '.join(list(BASELINES) + list(ZSHARM_VARIANTS))}; "
                        f"zsharm-paper is the paper schedule, the others zsharm without one part "
                        f"(default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--layout", default="auto", choices=("auto",) + LAYOUTS, help="dataset layout (default: detect)")
    p.add_argument("--split", default="test", help="iHarmony4 split list to read (default: %(default)s)")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--save-images", action="store_true", help="also write images/<method>/<name>.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    z = p.add_argument_group("the zsharm method")
    z.add_argument("--iterations", type=int, default=1, help="harmonization iterations per image (default: 1)")
    z.add_argument("--source", help="one source prompt for every image (else the dataset's captions, else the VLM)")
    z.add_argument("--target", help="one target prompt for every image")
    add_stage2_options(p)
    p.set_defaults(func=cli_evaluate)


def cli_evaluate(args) -> int:
    names = parse_methods(args.methods)
    if args.limit is not None and args.limit < 1:
        raise ZsharmError(f"--limit must be at least 1, got {args.limit}")
    if args.iterations < 1:
        raise ZsharmError(f"--iterations must be at least 1, got {args.iterations}")
    check_writable(Path(args.out) / "per_image.csv")  # before minutes of harmonizing
    samples = load_dataset(args.dataset, layout=args.layout, split=args.split, limit=args.limit)
    _check_ground_truth(samples)
    if "zsharm" in names:
        check_cache()
        _check_zsharm_prompts(samples, args)
    methods = {}
    for name in names:
        if name in ZSHARM_VARIANTS:
            config = config_from_options(args)
            changes = dict(ZSHARM_VARIANTS[name])
            if changes.pop("schedule", None) == "paper":
                from zsharm.config import HarmonizeConfig
                from zsharm.models import model_config
                config = HarmonizeConfig.paper(**model_config(args.model))
            config = config.replace(**changes)
            from zsharm.harmonizer import zsharm_method  # handed to quality/, which sits below the harmonizer
            methods[name] = zsharm_method(args.model, config, args.iterations, args.source, args.target,
                                          device=args.device, dtype=args.dtype, progress=not args.quiet)
        else:
            methods[name] = BASELINES[name]
    config = config_from_options(args) if "zsharm" in methods else None
    rows = evaluate(samples, methods, out_dir=args.out, save_images=args.save_images, progress=not args.quiet,
                    config=config)
    if not args.quiet:
        print(markdown_table(summarize(rows)), end="")
        print(f"{len(rows)} results in {args.out}/per_image.csv")
    return 0


def _check_ground_truth(samples) -> None:
    """Every metric compares with the ground truth: say so when images have none (their rows keep only the
    times), rather than leave empty columns unexplained."""
    missing = sum(sample.real_path is None for sample in samples)
    if missing:
        whole = "the dataset has" if missing == len(samples) else f"{missing} of {len(samples)} images have"
        print(f"zsharm: warning: {whole} no ground truth (real_images/, name_real.png or name_gt.png): no metric "
              f"can be measured there, only the time taken", file=sys.stderr)


def _check_zsharm_prompts(samples, args) -> None:
    """The prompts the zsharm method will use, typed or from the dataset's captions, pass `check_prompts` before
    the pipeline loads."""
    from zsharm.validate import check_prompts
    check_prompts(args.source, args.target)
    if args.source is not None:
        return
    for sample in samples:
        if sample.captions:
            try:
                check_prompts(*sample.captions[0])
            except ZsharmError as error:
                raise ZsharmError(f"{sample.name}'s caption: {error}") from None
