"""`python -m zsharm.commands.userstudy make|analyse`: the A/B preference study kit (zsharm.quality.userstudy)."""

import sys
from pathlib import Path

from zsharm.errors import ZsharmError
from zsharm.quality.userstudy import analyse, make_study, results_from_folder


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m zsharm.commands.userstudy", description="A/B preference study kit.")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="write a study page from images/<method>/<item>.png")
    make.add_argument("images", help="folder with one subfolder of results per method")
    make.add_argument("out", help="output folder (index.html, trials.csv)")
    make.add_argument("--composites", help="folder of the composites (<item>.png), shown as the reference")
    make.add_argument("--methods", help="comma-separated methods to include (default: all)")
    make.add_argument("--repeats", type=int, default=1)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--no-tie", action="store_true", help="force a choice (no 'no preference' button)")
    make.add_argument("--link-images", action="store_true", help="write images beside the page instead of inside it")
    ana = sub.add_parser("analyse", help="preference rates and a Bradley-Terry ranking from vote CSVs")
    ana.add_argument("votes", nargs="+")
    ana.add_argument("--prior", type=float, default=1.0)
    ana.add_argument("--bootstrap", type=int, default=0, help="resamples of participants for strength intervals")
    args = parser.parse_args(argv)
    try:
        if args.command == "make":
            results = results_from_folder(args.images)
            if args.methods:
                keep = [m.strip() for m in args.methods.split(",")]
                results = {i: {m: r[m] for m in keep if m in r} for i, r in results.items()}
            composites = None
            if args.composites:
                folder = Path(args.composites)
                composites = {p.stem: p for p in folder.iterdir() if p.stem in results}
            path = make_study(results, args.out, composites=composites, repeats=args.repeats, seed=args.seed,
                              allow_tie=not args.no_tie, embed=not args.link_images)
            print(path)
        else:
            print(analyse(args.votes, prior=args.prior, bootstrap=args.bootstrap), end="")
    except ZsharmError as error:
        print(f"zsharm: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
