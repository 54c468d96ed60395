"""One mask means one thing everywhere: every entry point reads a mask file through zsharm.io's one reader,
binarises it identically and refuses the same bad masks with the same one-line error (issue #12)."""

import json

import numpy as np
import pytest
from conftest import make_composite
from PIL import Image

from zsharm.commands.cli import main
from zsharm.config import HarmonizeConfig
from zsharm.errors import ZsharmError

W, H = 150, 110
PROMPTS = ["--source", "cat bright", "--target", "cat winter dull"]
QUICK = ["--model", "tiny", "--steps", "2", "--size", "64", "--no-edges", "--quiet", "--device", "cpu",
         "--no-evaluator"]


class ReachedStage2(Exception):
    """Raised by the spy on `at_work_size`: the mask as stage 2 receives it is in `.mask`."""

    def __init__(self, mask):
        super().__init__("stage 2 reached")
        self.mask = mask


@pytest.fixture()
def spy(monkeypatch):
    """No model is loaded (a placeholder pipe) and stage 2 stops at its first step, showing the mask it got."""
    import zsharm.edit.iteration
    import zsharm.models

    def at_work_size(picture, mask, config):
        raise ReachedStage2(mask)

    monkeypatch.setattr(zsharm.models, "load_pipeline", lambda *args, **kwargs: object())
    monkeypatch.setattr(zsharm.models, "prepare_pipeline", lambda pipe: pipe)
    monkeypatch.setattr(zsharm.edit.iteration, "at_work_size", at_work_size)


def tricky_masks(folder):
    """Mask files whose reading is easy to get wrong, each with the mask it means (H x W bool)."""
    truth = np.zeros((H, W), bool)
    truth[30:80, 50:100] = True
    masks = {}
    grey = np.where(truth, 101, 100).astype(np.uint8)  # just above and at the paper's 100/255
    Image.fromarray(grey).save(folder / "grey.png")
    masks["grey.png"] = truth
    deep = np.where(truth, 25701, 25700).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep.png")
    masks["deep.png"] = truth
    green = np.zeros((H, W, 3), np.uint8)
    green[truth, 1] = 255
    Image.fromarray(green).save(folder / "green.png")
    masks["green.png"] = truth
    red = np.zeros((H, W, 3), np.uint8)
    red[truth, 0] = 255  # luma 76: below 100/255 for a reader that converts to grey first
    Image.fromarray(red).save(folder / "red.png")
    masks["red.png"] = truth
    cutout = np.full((H, W, 4), 255, np.uint8)
    cutout[..., 3] = np.where(truth, 255, 0)
    Image.fromarray(cutout, "RGBA").save(folder / "cutout.png")
    masks["cutout.png"] = truth
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned, shown upright
    Image.fromarray(np.ascontiguousarray(np.rot90(truth.astype(np.uint8) * 255, 1))).save(
        folder / "rotated.png", exif=exif.tobytes())
    masks["rotated.png"] = truth
    return masks


def bad_masks(folder):
    Image.new("L", (W, H), 0).save(folder / "empty.png")
    Image.new("L", (W, H), 255).save(folder / "full.png")
    Image.new("L", (W + 2, H), 255).save(folder / "wrong_size.png")
    return ["empty.png", "full.png", "wrong_size.png"]


@pytest.fixture()
def composite(tmp_path):
    image, _ = make_composite(width=W, height=H)
    Image.fromarray(image).save(tmp_path / "comp.png")
    return tmp_path / "comp.png"


def read_by_every_entry_point(tmp_path, composite, mask_file, capsys):
    """{entry point: the mask it works with, or the one-line error it stops with}."""
    import shutil

    from zsharm.quality.datasets import load_dataset, read_mask
    from zsharm.io.masks import load_mask
    from zsharm.io.pictures import load_image
    from zsharm.harmonizer import Harmonizer
    seen = {}

    def record(name, fn):
        try:
            fn()
        except ReachedStage2 as reached:
            seen[name] = reached.mask
        except ZsharmError as error:
            seen[name] = str(error)

    def cli():
        code = main([str(a) for a in ["harmonize", composite, "--mask", mask_file, "--out", tmp_path / "o.png",
                                      *PROMPTS, *QUICK]])
        assert code == 2
        raise ZsharmError(capsys.readouterr().err.strip().removeprefix("zsharm: error: "))

    record("harmonize command", cli)
    harmonizer = Harmonizer(pipe=object(), config=HarmonizeConfig.fast(size=64), device="cpu", evaluator=None)
    record("Harmonizer", lambda: harmonizer(composite, mask_file, source="cat bright", target="cat dull"))
    picture = load_image(composite)
    seen["zsharm.io.masks.load_mask"] = _try(lambda: load_mask(mask_file, like=picture))

    dataset = tmp_path / "dataset"
    dataset.mkdir(exist_ok=True)
    for old in dataset.iterdir():
        old.unlink()
    shutil.copy(composite, dataset / "x.png")
    shutil.copy(mask_file, dataset / "x_mask.png")
    seen["evaluate's dataset"] = _try(lambda: load_dataset(dataset)[0].load()[1], rename=(dataset, tmp_path))
    seen["datasets.read_mask"] = _try(lambda: read_mask(mask_file, size=(W, H)))

    batch = tmp_path / "batch"
    shutil.rmtree(batch, ignore_errors=True)
    (batch / "composite").mkdir(parents=True)
    (batch / "mask").mkdir()
    shutil.copy(composite, batch / "composite" / "x.png")
    shutil.copy(mask_file, batch / "mask" / "x.png")
    # a good second item, so that a bad first one is reported in the run rather than refused up front
    shutil.copy(composite, batch / "composite" / "y.png")
    good = np.zeros((H, W), np.uint8)
    good[20:60, 30:90] = 255
    Image.fromarray(good).save(batch / "mask" / "y.png")
    out = tmp_path / "batch_out"
    shutil.rmtree(out, ignore_errors=True)
    try:
        main([str(a) for a in ["harmonize", "--batch", batch, "--out", out, *PROMPTS, *QUICK]])
    except ReachedStage2 as reached:
        failed = json.loads((out / "summary.json").read_text())["failed"]
        if failed:  # x was refused, y reached stage 2
            (failure,) = failed
            seen["batch"] = failure["error"].replace(str(batch / "mask" / "x.png"), str(mask_file))
        else:
            seen["batch"] = reached.mask
    capsys.readouterr()
    return seen


def _try(fn, rename=None):
    try:
        return fn()
    except ZsharmError as error:
        text = str(error)
        if rename:  # the dataset's copy of the mask has another path; the rest of the message must agree
            text = text.replace(str(rename[0] / "x_mask.png"), "MASK")
        return text


@pytest.mark.parametrize("name", ["grey.png", "deep.png", "green.png", "red.png", "cutout.png", "rotated.png"])
def test_every_entry_point_binarises_a_mask_file_identically(tmp_path, composite, spy, capsys, name):
    truth = tricky_masks(tmp_path)[name]
    seen = read_by_every_entry_point(tmp_path, composite, tmp_path / name, capsys)
    assert set(seen) == {"harmonize command", "Harmonizer", "zsharm.io.masks.load_mask", "evaluate's dataset",
                         "datasets.read_mask", "batch"}
    for entry, mask in seen.items():
        assert isinstance(mask, np.ndarray), (entry, mask)
        np.testing.assert_array_equal(mask, truth, err_msg=entry)


@pytest.mark.parametrize("name", ["empty.png", "full.png", "wrong_size.png"])
def test_every_entry_point_refuses_a_bad_mask_with_the_same_line(tmp_path, composite, spy, capsys, name):
    bad_masks(tmp_path)
    seen = read_by_every_entry_point(tmp_path, composite, tmp_path / name, capsys)
    dataset_line = seen.pop("evaluate's dataset")
    lines = set(seen.values())
    assert len(lines) == 1, seen
    (line,) = lines
    assert isinstance(line, str) and "\n" not in line and str(tmp_path / name) in line
    assert dataset_line == line.replace(str(tmp_path / name), "MASK")


def test_the_evaluators_training_reader_is_the_same_reader(tmp_path):
    from zsharm.quality.datasets import read_mask
    from zsharm.decide.training import _read_mask
    masks = tricky_masks(tmp_path)
    for name, truth in masks.items():
        np.testing.assert_array_equal(read_mask(tmp_path / name), truth)
        np.testing.assert_array_equal(_read_mask(tmp_path / name, (H, W)), truth, err_msg=name)


def bad_arrays():
    empty = np.zeros((H, W), bool)
    full = np.ones((H, W), bool)
    wrong = np.zeros((H, W + 2), bool)
    wrong[10:20, 10:20] = True
    return {"empty": empty, "full": full, "wrong size": wrong}


def _error(fn):
    try:
        fn()
    except ReachedStage2:
        return "reached stage 2"
    except ZsharmError as error:
        return str(error)
    return "accepted"


@pytest.mark.parametrize("name", ["empty", "full", "wrong size"])
def test_the_python_api_refuses_a_bad_mask_array_like_a_bad_file(composite, spy, name):
    from zsharm.io.masks import check_mask
    from zsharm.harmonizer import Harmonizer, harmonize
    mask = bad_arrays()[name]
    expected = _error(lambda: check_mask(mask, (W, H), "<array>"))
    assert expected.startswith("mask <array>")
    harmonizer = Harmonizer(pipe=object(), config=HarmonizeConfig.fast(size=64), device="cpu", evaluator=None)
    assert _error(lambda: harmonizer(composite, mask, source="cat bright", target="cat dull")) == expected
    assert _error(lambda: harmonize(composite, mask, "cat bright", "cat dull", pipe=object(), evaluator=None,
                                    config=HarmonizeConfig.fast(size=64))) == expected


def test_run_iteration_refuses_a_bad_mask_array_with_the_same_line(composite):
    from zsharm.edit.iteration import run_iteration
    from zsharm.io.masks import check_mask
    for mask in bad_arrays().values():
        expected = _error(lambda: check_mask(mask, (W, H), "<array>"))
        assert _error(lambda: run_iteration(object(), composite, mask, "cat bright", "cat dull")) == expected


def test_a_harmonize_run_reads_the_mask_file_once(tmp_path, composite, monkeypatch, capsys):
    """The command checks the mask, stage 2 gets it and the evaluator sees its soft values as the authors read
    them: all from one read of the file (the Python openers and cv2's reader counted)."""
    import builtins
    import io

    import cv2

    import zsharm.edit.iteration
    import zsharm.models
    mask = np.zeros((H, W), np.uint8)
    mask[30:80, 50:100] = 255
    mask_file = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_file)
    opened = []

    def counting(opener):
        def wrapper(file, *args, **kwargs):
            if str(file) == str(mask_file):
                opened.append(opener.__name__)
            return opener(file, *args, **kwargs)
        wrapper.__name__ = opener.__name__
        return wrapper

    monkeypatch.setattr(builtins, "open", counting(builtins.open))
    monkeypatch.setattr(io, "open", counting(io.open))
    monkeypatch.setattr(cv2, "imread", counting(cv2.imread))

    class Stage2:
        def __init__(self, image):
            self.work_image = image

    monkeypatch.setattr(zsharm.models, "load_pipeline", lambda *args, **kwargs: object())
    monkeypatch.setattr(zsharm.models, "prepare_pipeline", lambda pipe: pipe)
    monkeypatch.setattr(zsharm.edit.iteration, "iterate_at_work_size",
                        lambda pipe, current, *args, **kwargs: Stage2(current))
    code = main([str(a) for a in ["harmonize", composite, "--mask", mask_file, "--out", tmp_path / "o.png",
                                  *PROMPTS, "--model", "tiny", "--size", "64", "--no-edges", "--quiet",
                                  "--device", "cpu", "--evaluator", "random:tiny", "--iterations", "2",
                                  "--history", tmp_path / "history"]])
    assert code == 0, capsys.readouterr().err
    scores = [r["score"] for r in json.loads((tmp_path / "history" / "history.json").read_text())["iterations"]]
    assert len(scores) == 2 and all(s is not None for s in scores)  # the evaluator saw the mask
    assert len(opened) == 1, opened
