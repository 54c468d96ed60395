import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsharm.quality.datasets import detect_layout, load_dataset, natural_key
from zsharm.errors import ZsharmError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


def _image(path, value, size=(12, 8), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = (value, value // 2, 255 - value) if mode == "RGB" else value
    Image.new(mode, size, colour).save(path)
    return path


def _mask(path, size=(12, 8), box=(2, 2, 7, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = Image.new("L", size, 0)
    m.paste(255, box)
    m.save(path)
    return path


def _subset(root, name, entries):
    """An iHarmony4 sub-dataset: entries are (image id, mask id, n)."""
    for i, (image, mask, n) in enumerate(entries):
        _image(root / name / "composite_images" / f"{image}_{mask}_{n}.jpg", 10 * i)
        _mask(root / name / "masks" / f"{image}_{mask}.png")
        _image(root / name / "real_images" / f"{image}.jpg", 200)
    return root / name


# ----------------------------------------------------------------------------- iHarmony4

def test_iharmony4_subset_follows_its_list_file(tmp_path):
    folder = _subset(tmp_path, "HFlickr", [("f1", "1", "1"), ("f1", "1", "2"), ("f2", "3", "1")])
    (folder / "HFlickr_test.txt").write_text("f2_3_1.jpg\nf1_1_2.jpg\n")
    samples = load_dataset(folder)
    assert detect_layout(folder) == "iharmony4"
    assert [s.name for s in samples] == ["f2_3_1", "f1_1_2"]
    assert samples[0].mask_path == folder / "masks" / "f2_3.png"
    assert samples[0].real_path == folder / "real_images" / "f2.jpg"
    composite, mask, real = samples[1].load()
    assert composite.shape == (8, 12, 3) and mask.dtype == bool and mask.sum() == 20 and real.shape == (8, 12, 3)


def test_iharmony4_root_of_subsets_and_ihd_list(tmp_path):
    _subset(tmp_path, "HCOCO", [("c7", "2", "1")])
    _subset(tmp_path, "Hday2night", [("d1", "1", "1"), ("d1", "1", "2")])
    assert [s.name for s in load_dataset(tmp_path)] == ["HCOCO/c7_2_1", "Hday2night/d1_1_1", "Hday2night/d1_1_2"]
    (tmp_path / "IHD_test.txt").write_text("Hday2night/composite_images/d1_1_2.jpg\n")
    only = load_dataset(tmp_path)
    assert [s.name for s in only] == ["Hday2night/d1_1_2"]
    assert only[0].real_path == tmp_path / "Hday2night" / "real_images" / "d1.jpg"


def test_iharmony4_missing_mask_or_truth_is_a_one_line_error(tmp_path):
    folder = _subset(tmp_path, "HCOCO", [("c1", "1", "1")])
    (folder / "real_images" / "c1.jpg").unlink()
    with pytest.raises(ZsharmError, match="real_images/c1.jpg is missing"):
        load_dataset(folder)
    (folder / "masks" / "c1_1.png").unlink()
    with pytest.raises(ZsharmError, match="masks/c1_1.png is missing") as error:
        load_dataset(folder)
    assert "\n" not in str(error.value)


def test_iharmony4_captions_file(tmp_path):
    folder = _subset(tmp_path, "S", [("c1", "1", "1"), ("c1", "1", "2")])
    (folder / "captions.txt").write_text("c1_1_2.jpg\tcat dim,cat bright sunny;cat dull,cat warm\n")
    samples = load_dataset(folder)
    assert samples[0].captions is None
    assert samples[1].captions == (("cat dim", "cat bright sunny"), ("cat dull", "cat warm"))


# ----------------------------------------------------------------------------- the authors' layout

def test_authors_layout_pairs_by_name_in_natural_order_with_captions(tmp_path):
    for n in ("1", "2", "10"):
        _image(tmp_path / "composite" / f"{n}.png", int(n))
        _mask(tmp_path / "mask" / f"{n}_mask.png")
    (tmp_path / "caption.txt").write_text("cat bright,cat winter\ndog dim,dog sunny;dog dull,dog warm\nvase dim,vase warm\n")
    samples = load_dataset(tmp_path)
    assert detect_layout(tmp_path) == "authors"
    assert [s.name for s in samples] == ["1", "2", "10"]
    assert samples[2].mask_path.name == "10_mask.png"
    assert samples[1].captions == (("dog dim", "dog sunny"), ("dog dull", "dog warm"))
    assert samples[2].captions == (("vase dim", "vase warm"),)


def test_authors_layout_pairs_by_order_when_names_differ_and_counts_must_match(tmp_path):
    for n in ("a", "b"):
        _image(tmp_path / "composite" / f"{n}.jpg", 5)
    _mask(tmp_path / "mask" / "001_m.png")
    with pytest.raises(ZsharmError, match="2 composites but 1 masks"):
        load_dataset(tmp_path)
    _mask(tmp_path / "mask" / "002_m.png")
    assert [s.mask_path.name for s in load_dataset(tmp_path)] == ["001_m.png", "002_m.png"]
    (tmp_path / "caption.txt").write_text("cat bright,cat winter\n")
    with pytest.raises(ZsharmError, match="1 caption lines for 2 composites"):
        load_dataset(tmp_path)
    (tmp_path / "caption.txt").write_text("cat bright,cat winter\ncat bright\n")
    with pytest.raises(ZsharmError, match="caption.txt:2"):
        load_dataset(tmp_path)


# ----------------------------------------------------------------------------- RealHM

def test_realhm_composes_foreground_over_background(tmp_path):
    folder = tmp_path / "vendor_testing_1" / "batch"
    _image(folder / "p1.jpg", 250)            # the foreground photo
    _image(folder / "p1_fore.jpg", 20)        # the background (RealHM's name for it)
    _mask(folder / "p1_mask.jpg")
    _image(folder / "p1_gt.jpg", 120)
    assert detect_layout(tmp_path) == "realhm"
    (sample,) = load_dataset(tmp_path)
    assert sample.name == "vendor_testing_1/batch/p1" and sample.real_path.name == "p1_gt.jpg"
    composite, mask, real = sample.load()
    foreground = np.array(Image.open(folder / "p1.jpg").convert("RGB"))
    background = np.array(Image.open(folder / "p1_fore.jpg").convert("RGB"))
    assert np.array_equal(composite[mask], foreground[mask])
    assert np.array_equal(composite[~mask], background[~mask])


# ----------------------------------------------------------------------------- plain folders

def test_plain_folder_pairs_and_truth(tmp_path):
    _image(tmp_path / "a.png", 10)
    _mask(tmp_path / "a_mask.png")
    _image(tmp_path / "a_gt.png", 30)
    _image(tmp_path / "b.jpg", 50)
    _mask(tmp_path / "b_mask.png")
    samples = load_dataset(tmp_path)
    assert detect_layout(tmp_path) == "folder"
    assert [(s.name, s.real_path.name if s.real_path else None) for s in samples] == [("a", "a_gt.png"), ("b", None)]
    (tmp_path / "b_mask.png").unlink()
    _mask(tmp_path / "c_mask.png")
    with pytest.raises(ZsharmError, match="b.jpg: no mask"):
        load_dataset(tmp_path)


def test_size_mismatch_and_empty_folder_are_errors(tmp_path):
    _image(tmp_path / "a.png", 10, size=(12, 8))
    _mask(tmp_path / "a_mask.png", size=(10, 8), box=(1, 1, 4, 4))
    (sample,) = load_dataset(tmp_path)
    with pytest.raises(ZsharmError, match="a_mask.png is 10x8 but the image is 12x8"):
        sample.load()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ZsharmError, match="no known dataset layout"):
        load_dataset(empty)
    with pytest.raises(ZsharmError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_natural_order():
    assert sorted(["10.png", "9.png", "100.png", "1.png"], key=natural_key) == ["1.png", "9.png", "10.png", "100.png"]


# ----------------------------------------------------------------------------- the shipped data

def test_shipped_data_loads():
    synthetic = load_dataset(DATA / "synthetic")
    assert len(synthetic) == 20 and all(s.real_path and s.captions for s in synthetic)
    composites = load_dataset(DATA / "composites")
    assert len(composites) >= 3 and all(s.real_path is None and s.captions for s in composites)
    (demo,) = load_dataset(DATA / "demo")
    composite, mask, _ = demo.load()
    h, w = composite.shape[:2]
    assert 512 <= max(h, w) <= 768 and h != w
    assert 0.05 < mask.mean() < 0.5
    raw = Image.open(DATA / "demo" / "mask.png")
    assert raw.mode == "L" and set(np.unique(np.array(raw))) == {0, 255}
    for sample in synthetic[:4]:
        composite, mask, real = sample.load()
        # the edit changed the object, and only the object (up to JPEG noise)
        assert np.abs(composite[mask].astype(int) - real[mask]).mean() > 3
        assert np.abs(composite[~mask].astype(int) - real[~mask]).mean() < 1.5


def _script():
    spec = importlib.util.spec_from_file_location("make_demo_data", REPO / "scripts" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_data_script_is_deterministic_and_matches_the_committed_data(tmp_path):
    script = _script()
    script.build(tmp_path / "a")
    script.build(tmp_path / "b")
    assert script.compare(tmp_path / "a", tmp_path / "b") == []  # byte for byte, run to run
    made = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    committed = sorted(p.relative_to(DATA) for p in DATA.rglob("*") if p.is_file() and p.name not in ("polygons.json", "README.md"))
    assert made == committed
    for rel in made:
        new, old = tmp_path / "a" / rel, DATA / rel
        if rel.suffix == ".png":  # pixels exactly (the bytes may differ with another zlib)
            assert np.array_equal(np.array(Image.open(new)), np.array(Image.open(old))), rel
        elif rel.suffix == ".jpg":  # another libjpeg may round differently
            assert np.abs(np.array(Image.open(new), dtype=int) - np.array(Image.open(old))).mean() < 0.5, rel
        else:
            assert new.read_text() == old.read_text(), rel


def test_shipped_captions_use_the_papers_dictionary():
    """Every description in data/ follows the paper's rules (dictionary words, at most one per list,
    a brightness word in each), as zsharm.describe.description checks them."""
    describe = pytest.importorskip("zsharm.describe.description")
    captions = [c for d in ("demo", "composites", "synthetic") for s in load_dataset(DATA / d) for c in s.captions]
    assert len(captions) >= 26
    for source, target in captions:
        description = describe.Description.from_prompts(source, target, strict=True)
        assert description.source.split()[0] == source.split()[0]  # the object word leads both prompts
