"""The benchmark's counting formulas against real runs, the SD 2 base configs, fast vs paper, and the command."""

import json

import numpy as np
import pytest
import torch

from conftest import make_composite
from zsharm.repro.speed import markdown, measure_row, model_counts, paper_counts, resolve_model, row_config, schedule_counts, sd2_configs, summarise, synthetic_composite
from zsharm.commands.cli import main
from zsharm.config import HarmonizeConfig
from zsharm.edit.iteration import run_iteration

PROMPTS = ("cat bright", "cat winter dull")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_formula_gives_the_numbers_of_method_md():
    s = summarise(paper_counts(50))
    assert (s["unet_calls"], s["unet_images"], s["unet_images_grad"], s["vae_decodes_grad"]) == (439, 1270, 682, 145)
    assert paper_counts(50).total("unet", "nulltext", grad=True) == 145 and s["pidinet"] == 146 and s["vae_encodes"] == 1
    # the general formula, read off the config's switches, agrees with the authors' one at every step count
    for steps in (2, 3, 11, 12, 21, 50, 51, 70):
        assert schedule_counts(HarmonizeConfig.paper(steps=steps)) == paper_counts(steps), steps


@pytest.mark.parametrize("steps", [3, 12])  # 12: the null-text inner steps reach i//10 + 1 = 2
def test_paper_run_counts_equal_the_formula(tiny_pipe, random_edges, steps):
    image, mask = make_composite()
    cfg = HarmonizeConfig.paper(steps=steps, size=128, use_edges=True)
    res = run_iteration(tiny_pipe, image, mask, *PROMPTS, cfg, progress=False, pidinet=random_edges)
    assert model_counts(res.counts) == paper_counts(steps)


def test_fast_counts_match_its_formula_and_a_fifth_of_paper(tiny_pipe, random_edges):
    image, mask = make_composite(64, 64)
    cfg = HarmonizeConfig.fast(size=64)  # fast's own step count
    res = run_iteration(tiny_pipe, image, mask, *PROMPTS, cfg, progress=False, pidinet=random_edges)
    assert model_counts(res.counts) == schedule_counts(cfg)
    fast, paper = summarise(res.counts), summarise(paper_counts(50))
    assert 5 * fast["unet_images"] <= paper["unet_images"]
    assert fast["unet_images_grad"] < paper["unet_images_grad"] / 5


def test_formula_follows_every_switch(tiny_pipe, random_edges):
    # switches mixed differently from both named schedules, so the formula is not fitted to them
    image, mask = make_composite(64, 64)
    cfg = HarmonizeConfig.paper(steps=13, size=64, refine_iters=3, nulltext_max_inner=1,
                                inversion_batch_uncond_only=True, pidinet_grad=True)
    res = run_iteration(tiny_pipe, image, mask, *PROMPTS, cfg, progress=False, pidinet=random_edges)
    assert model_counts(res.counts) == schedule_counts(cfg)
    cfg = HarmonizeConfig.fast(steps=4, size=64, refine=False, use_edges=False, refine_cond_only=False)
    res = run_iteration(tiny_pipe, image, mask, *PROMPTS, cfg, progress=False)
    assert model_counts(res.counts) == schedule_counts(cfg)


def test_fast_keeps_the_identical_prompt_invariant_of_paper(tiny_pipe, random_edges):
    # Prompt-to-Prompt with nothing to change must give back the source branch exactly. Refinement is off so
    # both branches carry the same embedding. On the untamed tiny model a fused replacement that takes the
    # wrong row's queries and keys moves the foreground by ~28 grey levels; a correct one by none.
    image, mask = make_composite(64, 64)
    for cfg in (HarmonizeConfig.paper(steps=10, size=64, refine=False),
                HarmonizeConfig.fast(steps=10, size=64, refine=False)):
        res = run_iteration(tiny_pipe, image, mask, "cat bright", "cat bright", cfg, progress=False,
                            pidinet=random_edges)
        source, edited = (im.astype(int) for im in res.edit.images)
        assert np.abs(edited - source)[res.mask_work].max() <= 1, cfg.schedule


def test_fast_output_stays_near_paper_on_identical_prompts(tamed_pipe, random_edges):
    # Whole schedules at equal step counts on the tamed model, where the picture follows the DDIM trajectory
    # and not the random UNet: fast lands within ~0.4 grey levels (max 3) of paper; a trajectory one step
    # off lands ~0.7 (max 6) away, five steps off ~4 (max 27).
    image, mask = make_composite(64, 64)
    steps = HarmonizeConfig.fast().steps
    out = {}
    for name, cfg in (("paper", HarmonizeConfig.paper(steps=steps, size=64)),
                      ("fast", HarmonizeConfig.fast(size=64))):
        res = run_iteration(tamed_pipe, image, mask, "cat bright", "cat bright", cfg, progress=False,
                            pidinet=random_edges)
        out[name] = np.asarray(res.work_image, float)
    diff = np.abs(out["fast"] - out["paper"])[res.mask_work]
    assert diff.mean() < 0.6 and diff.max() <= 4
    assert np.array_equal(out["fast"][~res.mask_work], out["paper"][~res.mask_work])


def test_sd2_configs_build_the_released_architecture():
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = sd2_configs()
    with torch.device("meta"):  # shapes only: no memory, no time
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        vae = AutoencoderKL.from_config(cfg["vae"])
        text = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in cfg["text_encoder"].items() if k != "architectures"}))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # the parameter counts of the released SD 2 UNet, VAE and 23-layer OpenCLIP-H text tower
    assert (count(unet), count(vae), count(text)) == (865_910_724, 83_653_863, 340_387_840)
    assert unet.config.cross_attention_dim == text.config.hidden_size == 1024
    assert vae.config.scaling_factor == 0.18215
    scheduler = DDIMScheduler.from_config(cfg["scheduler"])
    scheduler.set_timesteps(50)
    assert scheduler.timesteps[0] == 981 and scheduler.timesteps[-1] == 1  # SD's steps_offset of 1
    assert scheduler.config.prediction_type == "epsilon"


def test_row_names_and_synthetic_composite():
    cfg, materialised = row_config("paper-fp32-materialised", steps=7, size=128)
    assert materialised and cfg.schedule == "paper" and cfg.steps == 7 and cfg.dtype == "fp32"
    assert cfg.arithmetic == "authors" and cfg.runs_authors_arithmetic(torch.device("cuda"))
    cfg, materialised = row_config("paper", size=128, arithmetic="fast")
    assert not materialised and not cfg.runs_authors_arithmetic(torch.device("cpu"))
    cfg, materialised = row_config("paper-fp32-materialised", size=128, arithmetic="fast")
    assert cfg.arithmetic == "authors"  # the baseline is the authors' arithmetic whatever the other rows use
    cfg, materialised = row_config("fast", size=128)
    assert not materialised and cfg.steps == HarmonizeConfig.fast().steps
    from zsharm.errors import ZsharmError
    with pytest.raises(ZsharmError, match="unknown schedule"):
        row_config("quick")
    with pytest.raises(ZsharmError, match="multiple of 64"):
        row_config("paper", size=100)
    image, mask = synthetic_composite(128)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and 0.1 < mask.mean() < 0.4
    assert np.abs(image[mask].mean(0) - image[~mask].mean(0)).max() > 20  # the pasted object stands out


def test_measure_row_reports_time_memory_and_counts():
    row = measure_row(resolve_model("tiny"), "fast", size=64, steps=3, repeats=2, device="cpu")
    assert len(row["seconds"]) == 2 and row["seconds_median"] > 0 and row["peak_memory_bytes"] > 0
    assert set(row["stage_seconds"]) == {"inversion", "refinement", "nulltext", "editing"}
    assert row["formula_match"] == "=" and row["summary"] == summarise(schedule_counts(row_config("fast", 3, 64)[0]))
    assert row["dtype"] == "fp32" and row["attention"] == "fused"
    # the paper schedule takes the fast arithmetic when asked, and keeps its counts
    row = measure_row(resolve_model("tiny"), "paper", size=64, steps=3, repeats=1, device="cpu", arithmetic="fast")
    assert row["attention"] == "fused" and row["formula_match"] == "="
    assert measure_row(resolve_model("tiny"), "paper", size=64, steps=3, repeats=1, device="cpu")["attention"] \
        == "all maps"


def test_bench_command_prints_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert main(["bench", "--model", "tiny", "--schedule", "paper,paper-fp32-materialised", "--size", "64",
                 "--steps", "2", "--repeats", "1", "--threads", "1", "--in-process", "--json", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threads"] == 1 and "1 torch thread" in report["device"]
    assert [r["name"] for r in report["rows"]] == ["paper", "paper-fp32-materialised"]
    assert report["rows"][1]["attention"] == "all maps" and report["rows"][1]["speedup"] == 1.0
    assert all(r["formula_match"] == "=" for r in report["rows"])
    table = out.read_text()
    assert table == markdown(report) and "| paper-fp32-materialised | 2 | fp32 | all maps |" in table
    assert report["device"].split(",")[0] in table
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left behind


def test_bench_command_rejects_bad_input(capsys, tmp_path):
    assert main(["bench", "--schedule", "paper,turbo", "--in-process"]) == 2
    assert "unknown schedule 'turbo'" in capsys.readouterr().err
    assert main(["bench", "--size", "100", "--in-process"]) == 2
    assert "multiple of 64" in capsys.readouterr().err
    assert main(["bench", "--repeats", "0", "--in-process"]) == 2
    assert "--repeats" in capsys.readouterr().err
    assert main(["bench", "--threads", "0", "--in-process"]) == 2
    assert "--threads" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda", "--in-process"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_isolated_row_runs_in_its_own_process():
    from zsharm.repro.speed import bench
    report = bench("tiny", ["fast"], size=64, steps=2, repeats=1, device="cpu", threads=1, isolate=True)
    row = report["rows"][0]
    assert report["isolated"] and "own process" in row["memory"] and row["formula_match"] == "="
    assert row["summary"] == summarise(schedule_counts(row_config("fast", 2, 64)[0]))


def test_activation_memory_counts_what_backward_keeps_and_not_the_weights():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "activation_memory.py"
    spec = importlib.util.spec_from_file_location("activation_memory", path)
    estimate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(estimate)
    linear = torch.nn.Linear(64, 32).requires_grad_(False)
    x = torch.zeros(10, 64, requires_grad=True)
    # for the input's gradient a frozen linear layer keeps only its weight, which is not counted; exp keeps its
    # output. Counting the weight would add 64 x 32 floats.
    assert estimate.saved_gib({"linear": linear}, lambda: linear(x).exp()) * 2**30 == 10 * 32 * 4
    # a kept 1x5x1024x1024 fp16 attention map counts, under the flash accounting, as an output (head size 64)
    # and one float32 log-sum-exp per query; refinement's own 16x16 cross-attention maps count in full
    scores = torch.zeros(1, 5, 1024, 1024, dtype=torch.float16, requires_grad=True)
    maps = torch.zeros(1, 5, 256, 77, dtype=torch.float16, requires_grad=True)
    assert estimate.saved_gib({}, lambda: scores.softmax(-1), flash=True) * 2**30 == 5 * 1024 * (64 * 2 + 4)
    assert estimate.saved_gib({}, lambda: scores.softmax(-1)) * 2**30 == 5 * 1024 * 1024 * 2
    assert estimate.saved_gib({}, lambda: maps.softmax(-1), flash=True) * 2**30 == 5 * 256 * 77 * 2
