import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsharm.quality.baselines import reinhard
from zsharm.commands.cli import main
from zsharm.quality.datasets import load_dataset
from zsharm.quality.compare import evaluate, read_rows, summarize
from zsharm.quality.metrics import measure

DATA = Path(__file__).resolve().parents[1] / "data"


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_writes_per_image_and_summary_tables(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["evaluate", str(DATA / "synthetic"), "--methods", "copy-paste,reinhard,histogram",
                 "--limit", "3", "--out", str(out), "--quiet", "--save-images"])
    assert code == 0
    rows = read_rows(out / "per_image.csv")
    assert list(_csv(out / "per_image.csv")[0]) == ["name", "method", "mse", "fmse", "psnr", "fpsnr", "ssim", "fedge",
                                                      "seconds"]
    assert [(r["name"], r["method"]) for r in rows[:4]] == [
        ("c1_1_1", "copy-paste"), ("c1_1_1", "reinhard"), ("c1_1_1", "histogram"), ("c1_1_2", "copy-paste")]
    assert len(rows) == 9
    # the numbers are the metrics of the method's output against the ground truth
    sample = load_dataset(DATA / "synthetic")[1]
    composite, mask, real = sample.load()
    expected = measure(reinhard(composite, mask), real, mask)
    row = next(r for r in rows if r["name"] == sample.name and r["method"] == "reinhard")
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-5)
    # copy-paste is the composite itself, saved for the user study
    saved = np.array(Image.open(out / "images" / "copy-paste" / "c1_1_1.png"))
    assert np.array_equal(saved, load_dataset(DATA / "synthetic")[0].load()[0])
    summary = _csv(out / "summary.csv")
    assert [s["method"] for s in summary] == ["copy-paste", "reinhard", "histogram"]
    mean_fmse = np.mean([r["fmse"] for r in rows if r["method"] == "histogram"])
    assert float(summary[2]["fmse"]) == pytest.approx(mean_fmse, rel=1e-5)
    table = (out / "summary.md").read_text()
    assert table.splitlines()[0].startswith("| method |") and "| histogram | 3/3 |" in table


def test_without_ground_truth_the_metrics_are_empty(tmp_path):
    out = tmp_path / "real"
    assert main(["evaluate", str(DATA / "composites"), "--methods", "copy-paste,poisson", "--out", str(out),
                 "--quiet", "--limit", "1"]) == 0
    rows = _csv(out / "per_image.csv")
    assert len(rows) == 2 and all(r["fmse"] == "" and float(r["seconds"]) >= 0 for r in rows)
    assert "| poisson | 0/1 | – |" in (out / "summary.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--methods", "copy-paste,magic"], "unknown method(s) magic"),
    (["--methods", "reinhard,reinhard"], "named twice"),
    (["--limit", "0"], "--limit must be at least 1"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    assert main(["evaluate", str(DATA / "synthetic"), "--out", str(tmp_path / "x")] + args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x" / "per_image.csv").exists()


def test_missing_dataset_is_an_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_summary_averages_only_images_with_truth():
    rows = [dict(name="a", method="m", mse=1.0, fmse=2.0, psnr=30.0, fpsnr=20.0, ssim=0.9, seconds=1.0),
            dict(name="b", method="m", mse=3.0, fmse=4.0, psnr=40.0, fpsnr=30.0, ssim=0.7, seconds=3.0),
            dict(name="c", method="m", mse=None, fmse=None, psnr=None, fpsnr=None, ssim=None, seconds=5.0)]
    (s,) = summarize(rows)
    assert (s["images"], s["with_truth"], s["fmse"], s["psnr"], s["seconds"]) == (3, 2, 3.0, 35.0, 3.0)


def test_a_method_that_changes_the_shape_is_caught():
    from zsharm.errors import ZsharmError

    samples = load_dataset(DATA / "synthetic", limit=1)
    with pytest.raises(ZsharmError, match="returned shape"):
        evaluate(samples, {"crop": lambda image, mask: image[1:]}, progress=False)


def test_zsharm_method_on_the_tiny_model(tmp_path):
    """The harmonizer through `zsharm evaluate` (random tiny weights: this checks the plumbing, not quality);
    its prompts come from the synthetic set's captions."""
    pytest.importorskip("zsharm.edit.iteration")
    out = tmp_path / "z"
    assert main(["evaluate", str(DATA / "synthetic"), "--methods", "copy-paste,zsharm", "--model", "tiny",
                 "--schedule", "fast", "--size", "64", "--steps", "2", "--no-edges", "--device", "cpu",
                 "--dtype", "fp32", "--limit", "1", "--out", str(out), "--quiet", "--save-images"]) == 0
    rows = read_rows(out / "per_image.csv")
    assert [r["method"] for r in rows] == ["copy-paste", "zsharm"]
    assert all(np.isfinite(r["fmse"]) for r in rows)
    composite, mask, _ = load_dataset(DATA / "synthetic", limit=1)[0].load()
    result = np.array(Image.open(out / "images" / "zsharm" / "c1_1_1.png"))
    assert result.shape == composite.shape
    assert np.array_equal(result[~mask], composite[~mask])
