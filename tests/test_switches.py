"""The fast-schedule ablation: its switches cover every difference between fast and paper, and its rows run."""

import dataclasses

import matplotlib
import pytest
import torch

from conftest import make_composite
from zsharm.repro.switches import ablate, fast_switches, markdown, plot, row_configs
from zsharm.repro.speed import schedule_counts
from zsharm.commands.cli import main
from zsharm.config import HarmonizeConfig
from zsharm.errors import ZsharmError

matplotlib.use("Agg")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_switches_turn_paper_into_fast_and_back():
    # every field fast sets differently from paper belongs to a switch: a new fast-only setting without an
    # ablation row fails here
    paper, fast = HarmonizeConfig.paper(arithmetic="authors"), HarmonizeConfig.fast(arithmetic="fast")
    on, off = {}, {}
    for s in fast_switches():
        assert s.on.keys() == s.off.keys() and s.on != s.off, s.name
        assert not (on.keys() & s.on.keys()), f"{s.name} shares a field with another switch"
        on.update(s.on)
        off.update(s.off)
    # the schedule's name is a label, not a switch: nothing computes differently because of it
    assert paper.replace(**on, schedule="fast") == fast
    assert fast.replace(**off, schedule="paper") == paper
    differing = {f.name for f in dataclasses.fields(HarmonizeConfig) if getattr(paper, f.name) != getattr(fast, f.name)}
    assert differing == set(on) | {"schedule"}


def test_rows_follow_the_device_arithmetic():
    cpu = {name: cfg for name, cfg, _ in row_configs(size=256, device="cpu")}
    assert cpu["paper"].runs_authors_arithmetic(torch.device("cpu"))
    assert not cpu["paper + fast arithmetic"].runs_authors_arithmetic(torch.device("cpu"))
    # the quirks switch changes the quirk fields, never the arithmetic
    assert cpu["paper + without the authors' quirks"].arithmetic == "authors"
    assert cpu["fast - without the authors' quirks"].arithmetic == "fast"
    assert cpu["fast"].steps == 20 and cpu["fast - 20 DDIM steps"].steps == 50
    cuda = {name: cfg for name, cfg, _ in row_configs(size=256, device="cuda")}
    # on a GPU paper already computes with the fast arithmetic: that row would repeat paper's
    assert "paper + fast arithmetic" not in cuda and "fast - fast arithmetic" in cuda
    quick = [name for name, _, _ in row_configs(size=64, steps=4)]
    assert not any("DDIM steps" in name for name in quick)


def test_ablation_rows_run_and_compare_with_paper(random_edges):
    image, mask = make_composite(64, 64)
    only = ["paper + 1 refinement step", "fast", "fast - PiDiNet gradients"]
    rows = ablate("tiny-tamed", image, mask, "cat bright", "cat winter dull", size=64, steps=4, device="cpu",
                  pidinet=random_edges, progress=False, only=only)
    by_name = {r.name: r for r in rows}
    assert [r.name for r in rows] == ["paper"] + only
    assert by_name["paper"].identical and by_name["paper"].fpsnr > 100
    configs = {name: cfg for name, cfg, _ in row_configs(size=64, steps=4)}
    for r in rows:
        assert r.counts.only(("unet", "unet_images", "vae_encode", "vae_decode", "pidinet")) \
            == schedule_counts(configs[r.name]), r.name
        assert r.image.shape == (64, 64, 3) and r.seconds > 0
    assert by_name["fast"].unet_images < by_name["paper"].unet_images
    # refinement changes the edit, so a row that refines differently must not come out identical
    assert not by_name["paper + 1 refinement step"].identical
    table = markdown(rows)
    assert table.count("\n") == len(rows) + 2 and "| paper | " in table and "identical" in table
    fig = plot(rows)
    assert len(fig.axes) == 2
    with pytest.raises(ZsharmError, match="unknown ablation row"):
        ablate("tiny-tamed", image, mask, "cat bright", "cat winter dull", size=64, steps=4, device="cpu",
               pidinet=random_edges, progress=False, only=["fast - everything"])


def test_ablate_command_writes_the_table(tmp_path, capsys, monkeypatch, pidinet_dir):
    monkeypatch.setenv("ZSHARM_PIDINET_WEIGHTS", str(pidinet_dir))
    out = tmp_path / "ablation.md"
    assert main(["ablate", "--model", "tiny-tamed", "--size", "64", "--steps", "3", "--device", "cpu",
                 "--rows", "fast", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() in printed and "| fast | " in out.read_text()
    assert main(["ablate", "--size", "100"]) == 2
    assert "multiple of 64" in capsys.readouterr().err


def test_ablate_command_needs_the_mask_of_a_given_image(tmp_path, capsys):
    assert main(["ablate", "--image", str(tmp_path / "composite.png"), "--size", "64"]) == 2
    assert "--image needs its --mask" in capsys.readouterr().err


def test_the_ablation_takes_the_models_own_values_the_toy_priors_map_resolution():
    """Notebook 10 on a laptop (the toy prior) stopped with "no 4x4 cross-attention maps": the rows were built
    with SD's map resolution, not the one the toy prior's zsharm.json sets."""
    from zsharm.io.masks import load_mask
    from zsharm.io.pictures import load_image
    from zsharm.models import model_config
    toy = model_config("toy")
    assert toy["attention_res_divisor"] != HarmonizeConfig().attention_res_divisor
    configs = {name: cfg for name, cfg, _ in row_configs(size=128, steps=2, model_values=toy)}
    assert all(cfg.attention_res_divisor == toy["attention_res_divisor"] and cfg.size == 128 and cfg.steps == 2
               for cfg in configs.values())
    image = load_image("data/toy/composite_images/t1000000_1_1.png").to_pil_rgb8()
    mask = load_mask("data/toy/masks/t1000000_1.png", size=image.size)
    rows = ablate("toy", image, mask, "house dim warm daylight", "house bright warm daylight", size=128, steps=2,
                  device="cpu", progress=False, only=["fast"])
    assert [r.name for r in rows] == ["paper", "fast"] and rows[0].identical
