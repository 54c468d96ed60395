"""Every result records the configuration that made it (HarmonizeConfig.to_dict), and that record reruns it:
`HarmonizeConfig.from_dict`, or `zsharm harmonize --config FILE` with the command line's own options on top."""

import json

import numpy as np
import pytest
from conftest import make_composite
from PIL import Image

from zsharm.commands.cli import main
from zsharm.config import HarmonizeConfig

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["--model", "tiny", "--size", "64", "--no-edges", "--quiet", "--device", "cpu", "--no-evaluator",
         "--source", "cat bright", "--target", "cat winter dull"]


def test_a_configuration_survives_its_json_record_field_for_field():
    config = HarmonizeConfig.paper(steps=7, seed=3, nulltext_terms=("edges", "colour_term:ColourHistogramLoss"))
    again = HarmonizeConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.evaluator_scoring == "saved_jpeg"
    with pytest.raises(ValueError, match="not a configuration field: stepz"):
        HarmonizeConfig.from_dict({**config.to_dict(), "stepz": 3})


def test_rerunning_from_a_history_reproduces_the_result_and_options_given_override_it(tmp_path, capsys):
    image, mask = make_composite(width=64, height=64)
    Image.fromarray(image).save(tmp_path / "comp.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    inputs = [str(tmp_path / "comp.png"), "--mask", str(tmp_path / "mask.png")]

    def harmonize(out, *options):
        code = main(["harmonize", *inputs, "--out", str(tmp_path / out), "--history", str(tmp_path / out[:-4]),
                     *QUICK, *options])
        assert code == 0, capsys.readouterr().err
        record = json.loads((tmp_path / out[:-4] / "history.json").read_text())
        return np.asarray(Image.open(tmp_path / out)), record["config"]

    first, recorded = harmonize("first.png", "--schedule", "paper", "--steps", "3", "--seed", "5")
    assert recorded == HarmonizeConfig.paper(steps=3, seed=5, size=64, use_edges=False).to_dict()
    again, config = harmonize("again.png", "--config", str(tmp_path / "first" / "history.json"))
    assert config == recorded
    assert np.array_equal(again, first)
    other, config = harmonize("other.png", "--config", str(tmp_path / "first" / "history.json"), "--seed", "6")
    assert config == {**recorded, "seed": 6}
    assert not np.array_equal(other, first)


def test_schedule_and_config_together_are_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(HarmonizeConfig().to_dict()))
    code = main(["harmonize", "x.png", "--mask", "m.png", "--out", str(tmp_path / "o.png"), "--schedule", "paper",
                 "--config", str(tmp_path / "config.json")])
    assert code == 2 and "give one of them" in capsys.readouterr().err


def test_a_batch_summary_and_its_merge_record_the_configuration(tmp_path):
    from test_batch import Harmonizer, authors_layout

    from zsharm.batch import find_batch_items, merge_summaries, run_batch
    config = HarmonizeConfig.paper(steps=4).to_dict()
    root, out = authors_layout(tmp_path / "demo", n=4), tmp_path / "out"
    for i in range(2):
        run_batch(find_batch_items(root), out, Harmonizer(), shard=(i, 2), progress=False, config=config)
        assert json.loads((out / f"summary.shard{i}of2.json").read_text())["config"] == config
    assert merge_summaries(out)["config"] == config
    assert HarmonizeConfig.from_dict(json.loads((out / "summary.json").read_text())["config"]).steps == 4
