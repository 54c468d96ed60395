"""`zsharm describe`: a composite's descriptions printed, or a folder's caption.txt written (stage 1)."""

import argparse
import json
import sys
import warnings
from pathlib import Path

from zsharm.commands.options import add_vlm_arguments, describer_from_args
from zsharm.errors import ZsharmError


def register(subparsers) -> None:
    """Add `zsharm describe`."""
    parser = subparsers.add_parser(
        "describe", help="describe a composite's imaging conditions with a VLM (stage 1), or a whole folder",
        description="Ask a vision-language model for imaging-condition descriptions of a composite: the object, "
                    "the foreground's conditions and the background's, in the paper's dictionary words. Given a "
                    "folder (the layouts of `zsharm harmonize --batch`), write the authors' caption.txt, one line "
                    "per image, so the folder can then be harmonized in batch without the VLM.")
    parser.add_argument("composite", metavar="COMPOSITE", help="the composite image, or a folder of them")
    parser.add_argument("--mask", help="the foreground mask (foreground > 100/255); not with a folder")
    add_vlm_arguments(parser)
    parser.add_argument("--candidates", type=int, default=2, metavar="N", help="distinct descriptions (default: 2)")
    parser.add_argument("--json", action="store_true",
                        help='one JSON object a line per candidate: '
                             '{"object", "foreground", "background", "source", "target"}')
    parser.add_argument("--out", metavar="TXT", help="with a folder: the caption file to write (default: "
                        "FOLDER/caption.txt, which `harmonize --batch FOLDER` reads)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from zsharm.cache import check_cache
    check_cache()
    if Path(args.composite).is_dir():
        return _describe_folder(args)
    if not args.mask:
        raise ZsharmError(f"no --mask given for {args.composite}: describing needs the foreground mask")
    if args.out:
        raise ZsharmError("--out writes a folder's caption file; for one image the descriptions are printed")
    from zsharm.describe.factory import check_describer_ready
    from zsharm.io.masks import read_pair
    picture, mask = read_pair(args.composite, args.mask)
    image = picture.to_pil_rgb8()
    describer = describer_from_args(args)
    check_describer_ready(describer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        descriptions = describer.describe(image, mask, n=args.candidates, name=str(args.composite))
    for warning in caught:
        print(f"zsharm: warning: {warning.message}", file=sys.stderr)
    for description in descriptions:
        print(json.dumps(description.to_json()) if args.json else description)
    return 0


def _describe_folder(args: argparse.Namespace) -> int:
    """Caption a folder once (the authors' workflow): line i of the caption file holds image i's candidates,
    in the natural name order `harmonize --batch` pairs them in. Written only when every image is described."""
    from tqdm.auto import tqdm

    from zsharm.batch import find_batch_items
    from zsharm.describe.captions import write_caption_file
    from zsharm.describe.factory import check_describer_ready
    from zsharm.io.files import check_writable
    from zsharm.io.masks import load_mask
    from zsharm.io.pictures import load_image

    folder = Path(args.composite)
    if args.mask:
        raise ZsharmError(f"{folder} is a folder: its masks are found beside the images (no --mask)")
    out = Path(args.out) if args.out else folder / "caption.txt"
    if out.exists():
        raise ZsharmError(f"{out} exists; delete it or write elsewhere with --out")
    check_writable(out)
    # the folder's own caption.txt is not read: it may be the very file being replaced
    items = find_batch_items(folder, read_captions=False)
    missing = [item.composite.name for item in items if item.mask is None]
    if missing:
        raise ZsharmError(f"no mask found for {missing[0]} ({len(missing)} image(s) without one) in {folder}")
    describer = describer_from_args(args)
    check_describer_ready(describer)
    lines = []
    try:
        for item in tqdm(items, desc="describe", disable=args.quiet):
            image = load_image(item.composite).to_pil_rgb8()
            mask = load_mask(item.mask, size=image.size)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                found = describer.describe(image, mask, n=args.candidates, name=item.composite.name)
            for warning in caught:
                print(f"zsharm: warning: {warning.message}", file=sys.stderr)
            lines.append([(d.source, d.target) for d in found])
    finally:
        describer.release()
    write_caption_file(out, lines)
    if not args.quiet:
        print(f"{out}: {len(lines)} images, {sum(map(len, lines))} descriptions")
    return 0
