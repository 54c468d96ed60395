"""Build zsharm's demo data in data/ from photos that installed packages ship.

    python scripts/make_demo_data.py            # writes data/demo, data/composites, data/synthetic, data/toy
    python scripts/make_demo_data.py --check    # rebuilds into a temp folder and compares with data/ byte for byte

Every photo comes from scikit-image's or matplotlib's bundled sample data (no download); every object
outline is a polygon in data/polygons.json. Nothing is random except through the fixed seeds below, so
the output is the same bytes on every run with the same Pillow / libjpeg / zlib.

Two kinds of data:
- real-looking composites: an object cut out of one photo and pasted into another photo taken in
  different light (no ground truth) - data/demo (the newcomer's first input) and data/composites
  (the authors' demo layout: composite/, mask/, caption.txt);
- synthetic composites with ground truth, made the way iHarmony4 was: an object's colour, exposure,
  white balance or tone is changed inside its mask and the untouched photo is kept as the truth -
  data/synthetic (the iHarmony4 layout: composite_images/, masks/, real_images/, synthetic_test.txt).
"""

import argparse
import filecmp
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
POLYGONS = REPO / "data" / "polygons.json"
JPEG_QUALITY = 90  # iHarmony4 ships JPEGs; 90 keeps compression noise well below the edits
SEED = 20240717


# ---------------------------------------------------------------- sources

def load_photo(name: str) -> np.ndarray:
    """A bundled photo as uint8 HxWx3 RGB."""
    if name == "grace_hopper":
        import matplotlib.cbook
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.array(Image.open(f).convert("RGB"))
    import skimage.data
    loaders = {
        "astronaut": skimage.data.astronaut,
        "chelsea": skimage.data.chelsea,
        "coffee": skimage.data.coffee,
        "rocket": skimage.data.rocket,
        "hubble": skimage.data.hubble_deep_field,
        "camera": skimage.data.camera,
    }
    image = loaders[name]()
    if image.ndim == 2:  # greyscale photos become three equal channels
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def object_mask(obj: dict, shape) -> np.ndarray:
    """Rasterise an object's polygons (union) into a bool HxW mask."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in obj["polygons"]:
        draw.polygon([tuple(p) for p in polygon], fill=255, outline=255)
    return np.array(canvas) > 0


def cutout(objects: dict, name: str):
    """(photo, mask) of a polygon-outlined object."""
    obj = objects[name]
    photo = load_photo(obj["photo"])
    return photo, object_mask(obj, photo.shape)


# ---------------------------------------------------------------- writing

def save(image, path: Path, jpeg: bool = False):
    """Write a PNG (or JPEG) atomically; masks are bool arrays saved as 8-bit L (0 / 255)."""
    array = np.asarray(image)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buffer = io.BytesIO()
    if jpeg:
        Image.fromarray(array).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    else:
        Image.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=9)
    write_bytes(path, buffer.getvalue())


def write_bytes(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=path.suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; data is for everyone to read
    os.replace(tmp, path)


def write_text(path: Path, text: str):
    write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------- real-looking composites

def paste(background, photo, mask, scale, left, bottom_gap=0):
    """Paste the masked object of `photo`, resized by `scale`, into `background` with its box's left
    edge at x=`left` and its bottom `bottom_gap` pixels above the background's bottom edge (the box is
    clipped to the frame). Returns (composite uint8, mask bool) at the background's size."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    w, h = round((x1 - x0) * scale), round((y1 - y0) * scale)
    fg = np.array(Image.fromarray(photo[y0:y1, x0:x1]).resize((w, h), Image.LANCZOS))
    fg_mask = np.array(Image.fromarray(mask[y0:y1, x0:x1].astype(np.uint8) * 255).resize((w, h), Image.BILINEAR)) >= 128
    H, W = background.shape[:2]
    top = H - bottom_gap - h
    # clip the pasted box to the frame
    sy0, sx0 = max(0, -top), max(0, -left)
    sy1, sx1 = min(h, H - top), min(w, W - left)
    composite, full_mask = background.copy(), np.zeros((H, W), bool)
    region = (slice(top + sy0, top + sy1), slice(left + sx0, left + sx1))
    m = fg_mask[sy0:sy1, sx0:sx1]
    full_mask[region] = m
    composite[region][m] = fg[sy0:sy1, sx0:sx1][m]
    return composite, full_mask


def resize_to(image, long_side):
    """Resize so the long side is `long_side` (LANCZOS), keeping the aspect ratio."""
    h, w = image.shape[:2]
    s = long_side / max(h, w)
    return np.array(Image.fromarray(image).resize((round(w * s), round(h * s)), Image.LANCZOS))


# name -> (object, background photo, scale, left, bottom gap, background long side or None, captions)
# captions: the authors' format, candidates separated by ';', each "OBJECT fgwords,OBJECT bgwords",
# words from the paper's dictionary (docs/method.md, section 1.2), a brightness word in each list.
REAL_COMPOSITES = {
    "astronaut_rocket": ("astronaut_person", "rocket", 0.64, 40, 0, None,
                         "astronaut bright warm indoor,astronaut dim blue twilight;"
                         "astronaut dazzling golden,astronaut shaded cool dusk"),
    "hopper_hubble": ("grace_hopper_person", "hubble", 0.78, 150, 0, 640,
                      "woman bright blue indoor,woman dull dark space;"
                      "woman bright warm,woman dim night space"),
    "cup_camera": ("coffee_cup", "camera", 0.5, 300, 20, None,
                   "cup bright warm indoor,cup dull greyscale;"
                   "cup bright orange,cup shaded greyscale grassland"),
}


def make_real(objects, name):
    obj, bg_name, scale, left, gap, long_side, captions = REAL_COMPOSITES[name]
    photo, mask = cutout(objects, obj)
    background = load_photo(bg_name)
    if long_side:
        background = resize_to(background, long_side)
    composite, full_mask = paste(background, photo, mask, scale, left, gap)
    return composite, full_mask, captions


def build_composites(objects, out: Path):
    """The authors' demo layout: composite/NNN.png, mask/NNN_mask.png, caption.txt (one line each, in order)."""
    lines = []
    for i, name in enumerate(REAL_COMPOSITES, start=1):
        composite, mask, captions = make_real(objects, name)
        save(composite, out / "composites" / "composite" / f"{i:03d}.png")
        save(mask, out / "composites" / "mask" / f"{i:03d}_mask.png")
        lines.append(captions)
    write_text(out / "composites" / "caption.txt", "\n".join(lines) + "\n")


def build_demo(objects, out: Path):
    composite, mask, captions = make_real(objects, "astronaut_rocket")
    save(composite, out / "demo" / "composite.png")
    save(mask, out / "demo" / "mask.png")
    write_text(out / "demo" / "caption.txt", captions + "\n")


# ---------------------------------------------------------------- synthetic composites with ground truth

# id -> (object, its name in prompts, the photo's conditions in the paper's dictionary words); every
# object gets every edit, numbered as EDITS is ordered
SYNTHETIC_OBJECTS = {
    1: ("astronaut_person", "astronaut", "bright indoor"),
    2: ("grace_hopper_person", "woman", "bright blue indoor"),
    3: ("coffee_cup", "cup", "bright warm indoor"),
    4: ("chelsea_cat", "cat", "bright warm indoor"),
    5: ("rocket_falcon9", "rocket", "dim blue twilight"),
}


def srgb_to_linear(u):
    return np.where(u <= 0.04045, u / 12.92, ((u + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v):
    v = np.clip(v, 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


def sign(rng):
    return 1.0 if rng.random() < 0.5 else -1.0


# Each edit maps foreground pixels (Nx3 in [0, 1]) to new ones and says, in dictionary words, how the
# edited object now looks (the source prompt's words; the photo's own conditions are the target's).

def edit_white_balance(unit, rng, donor):
    """Warmer or cooler light: per-channel gains in linear light, luminance kept."""
    t = sign(rng) * rng.uniform(0.25, 0.4)
    gains = np.exp(np.array([t, rng.uniform(-0.08, 0.08), -t]))
    gains /= gains @ np.array([0.2126, 0.7152, 0.0722])
    words = "bright warm orange" if t > 0 else "bright cool blue"
    return linear_to_srgb(srgb_to_linear(unit) * gains), words


def edit_exposure(unit, rng, donor):
    """Over- or under-exposure by 0.8-1.4 stops in linear light."""
    ev = sign(rng) * rng.uniform(0.8, 1.4)
    return linear_to_srgb(srgb_to_linear(unit) * 2.0**ev), ("dazzling" if ev > 0 else "shadowed")


def edit_tone(unit, rng, donor):
    """A different tone curve: gamma, contrast and saturation changed together."""
    gamma = np.exp(sign(rng) * rng.uniform(0.3, 0.5))
    out = unit ** gamma
    grey = out @ np.array([0.299, 0.587, 0.114])
    sat = rng.uniform(0.35, 0.6) if rng.random() < 0.5 else rng.uniform(1.5, 1.8)
    out = grey[..., None] + sat * (out - grey[..., None])
    contrast = rng.uniform(0.7, 1.3)
    words = "dull greyscale" if sat < 1 else "bright neon"
    return np.clip((out - 0.5) * contrast + 0.5, 0.0, 1.0), words


def edit_colour_transfer(unit, rng, donor):
    """HCOCO's recipe: the object's CIELAB mean and spread are set to another photo's object's."""
    from skimage.color import lab2rgb, rgb2lab

    donor, words = donor
    lab, ref = rgb2lab(unit), rgb2lab(donor)
    out = (lab - lab.mean(axis=0)) / np.maximum(lab.std(axis=0), 1e-6) * ref.std(axis=0) + ref.mean(axis=0)
    out[:, 0] = np.clip(out[:, 0], 0.0, 100.0)
    with warnings.catch_warnings():  # colours outside sRGB are clipped, which is what we want
        warnings.simplefilter("ignore", UserWarning)
        return np.clip(lab2rgb(out[:, None, :])[:, 0, :], 0.0, 1.0), words


EDITS = {1: edit_white_balance, 2: edit_exposure, 3: edit_tone, 4: edit_colour_transfer}


def jpeg_roundtrip(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue(), np.array(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def build_synthetic(objects, out: Path):
    """iHarmony4 layout: composite_images/c<id>_<maskid>_<n>.jpg, masks/c<id>_<maskid>.png,
    real_images/c<id>.jpg, synthetic_test.txt listing the composites, and captions.txt (zsharm's addition:
    `name<TAB>source,target`, the edit's words against the photo's own)."""
    root = out / "synthetic"
    rng = np.random.default_rng(SEED)
    cutouts = {i: cutout(objects, obj) for i, (obj, _, _) in SYNTHETIC_OBJECTS.items()}
    names, captions = [], []
    for i, (photo, mask) in cutouts.items():
        _, word, scene = SYNTHETIC_OBJECTS[i]
        real_bytes, real = jpeg_roundtrip(photo)
        write_bytes(root / "real_images" / f"c{i}.jpg", real_bytes)
        save(mask, root / "masks" / f"c{i}_1.png")
        fg = real[mask].astype(np.float64) / 255.0
        for n, edit in EDITS.items():
            donor_id = [j for j in cutouts if j != i][int(rng.integers(len(cutouts) - 1))]
            donor_photo, donor_mask = cutouts[donor_id]
            donor = (donor_photo[donor_mask].astype(np.float64) / 255.0, SYNTHETIC_OBJECTS[donor_id][2])
            new, words = edit(fg, rng, donor)
            composite = real.copy()
            composite[mask] = np.round(np.clip(new, 0, 1) * 255.0).astype(np.uint8)
            name = f"c{i}_1_{n}.jpg"
            save(composite, root / "composite_images" / name, jpeg=True)
            names.append(name)
            captions.append(f"{name}\t{word} {words},{word} {scene}")
    write_text(root / "synthetic_test.txt", "\n".join(names) + "\n")
    write_text(root / "captions.txt", "\n".join(captions) + "\n")


# ---------------------------------------------------------------- main

def build(out: Path):
    objects = json.loads(POLYGONS.read_text())["objects"]
    build_demo(objects, out)
    build_composites(objects, out)
    build_synthetic(objects, out)
    build_toy(out)


def build_toy(out: Path, count: int = 32):
    """data/toy: held-out composites of the toy world with their ground truth (what `zsharm toy data` writes)."""
    from zsharm.toy import world
    from zsharm.toy_lab.train import write_composites
    write_composites(out / "toy", [world.HELD_OUT_SEEDS[i] for i in range(count)], "test", desc="toy composites")


def compare(a: Path, b: Path):
    """Files that differ or exist on one side only (polygons.json and README.md are inputs, not outputs)."""
    def files(root):
        return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}
    inputs = {Path("polygons.json"), Path("README.md")}
    fa, fb = files(a) - inputs, files(b) - inputs
    bad = sorted(fa ^ fb)
    bad += sorted(p for p in fa & fb if not filecmp.cmp(a / p, b / p, shallow=False))
    return bad


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "data", help="output folder (default: data/)")
    parser.add_argument("--check", action="store_true", help="rebuild in a temp folder and compare with --out")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
            bad = compare(args.out, Path(tmp))
        if bad:
            print("differs:", *bad, sep="\n  ")
            return 1
        print(f"{args.out} is reproduced byte for byte")
        return 0
    build(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
