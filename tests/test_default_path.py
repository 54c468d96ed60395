"""The choices the default path makes, checked by their effect on real runs of tiny models.

Every unit these tests go through is tested alone elsewhere; what is checked here is how they are put together:
which colour transfer carries the work-size change to full resolution (seen in the output's fine detail),
which image and which description every loop iteration starts from across a Regenerate (a scripted evaluator
forces the decisions, stage 2 is the real tiny model), how the evaluator is asked to score under each schedule,
and that the schedule asked for on the command line is the one stage 2 runs.
"""

import json

import cv2
import numpy as np
import pytest
from PIL import Image

import zsharm
from zsharm.commands.cli import main
from zsharm.config import HarmonizeConfig
from zsharm.decide.evaluator import jpeg_round_trip

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_thread")]

# the smallest run that still goes through every stage-2 step: 2 DDIM steps at a 64-px work size
TINY = ["--model", "tiny", "--steps", "2", "--size", "64", "--no-edges", "--quiet", "--device", "cpu"]
TWO_DESCRIPTIONS = [("cat bright", "cat dull"), ("cat dim", "cat dusk")]


def textured_composite(width=256, height=192, seed=3):
    """A smooth scene with a foreground carrying fine texture (1-2 px grain and stripes), and its mask.

    At a 64-px work size the texture is far below what the work image can hold: only a transfer that
    keeps the full-resolution pixels can show it in the output."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    image = np.stack([0.35 + 0.3 * x, 0.45 + 0.2 * y, 0.55 - 0.2 * x], -1)
    mask = np.zeros((height, width), bool)
    mask[height // 5: 4 * height // 5, width // 4: 3 * width // 4] = True
    grain = 0.12 * rng.standard_normal((height, width, 1)) + 0.08 * np.sin(np.arange(width) * 2.4)[None, :, None]
    image[mask] = (image * [1.3, 0.8, 0.7] + grain)[mask]
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask


def detail(rgb: np.ndarray) -> np.ndarray:
    """What a 2-px Gaussian takes away: the fine texture."""
    rgb = rgb.astype(np.float32) / 255
    return rgb - cv2.GaussianBlur(rgb, (0, 0), 2)


def texture_kept(output: np.ndarray, composite: np.ndarray, mask: np.ndarray, block: int = 8) -> float:
    """The share of the output's fine detail that the composite's texture explains, up to a gain per 8x8 block
    and channel (mean R^2 over the blocks inside the mask, away from its border).

    Not a PSNR of the detail: a tiny random model's edit is arbitrary, and the guided transfer carries it as an
    arbitrary smooth colour map that scales (even flips) the texture; what it never does is lose it. A resize of
    the work image has none of it (R^2 near 0)."""
    out, texture = detail(output), detail(composite).mean(-1)
    inside = cv2.erode(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    shares = []
    for y in range(0, mask.shape[0] - block + 1, block):
        for x in range(0, mask.shape[1] - block + 1, block):
            if not inside[y:y + block, x:x + block].all():
                continue
            t = texture[y:y + block, x:x + block].ravel()
            for channel in range(3):
                o = out[y:y + block, x:x + block, channel].ravel()
                gain = (t @ o) / (t @ t)
                shares.append(1 - np.sum((o - gain * t) ** 2) / np.sum(o ** 2))
    assert len(shares) > 100
    return float(np.mean(shares))


@pytest.fixture(scope="module")
def textured_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("textured")
    image, mask = textured_composite()
    Image.fromarray(image).save(folder / "composite.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask.png")
    return folder / "composite.png", folder / "mask.png", image, mask


# ---------------------------------------------------------------- which transfer runs


@pytest.fixture(scope="module")
def harmonized_both_ways(textured_files, tmp_path_factory):
    """`zsharm harmonize` on the textured composite, by default and with --transfer resize."""
    comp, mask_file, _, _ = textured_files
    folder = tmp_path_factory.mktemp("transfer")
    outputs = {}
    for name, extra in (("default", []), ("resize", ["--transfer", "resize"])):
        out = folder / f"{name}.png"
        code = main(["harmonize", str(comp), "--mask", str(mask_file), "--out", str(out), "--no-evaluator",
                     "--source", "cat bright", "--target", "cat dull", "--history", str(folder / name), *TINY,
                     *extra])
        assert code == 0
        outputs[name] = np.asarray(Image.open(out).convert("RGB"))
    outputs["history"] = json.loads((folder / "default" / "history.json").read_text())
    return outputs


def test_without_an_evaluator_the_command_runs_one_iteration(harmonized_both_ways):
    rows = harmonized_both_ways["history"]["iterations"]
    assert [(r["iteration"], r["score"], r["decision"]) for r in rows] == [(0, None, "stop")]


def test_the_default_command_keeps_the_full_resolution_detail_a_resize_loses(harmonized_both_ways, textured_files):
    _, _, composite, mask = textured_files
    # the guided transfer applies a smooth colour map to the input's own pixels (measured: 0.72 of the detail
    # explained); a resize of the 64-px work image has no texture left (0.01)
    default = texture_kept(harmonized_both_ways["default"], composite, mask)
    resized = texture_kept(harmonized_both_ways["resize"], composite, mask)
    assert default > 0.5 > 0.1 > resized, (default, resized)


def test_both_transfers_leave_the_background_bit_identical(harmonized_both_ways, textured_files):
    _, _, composite, mask = textured_files
    for output in (harmonized_both_ways["default"], harmonized_both_ways["resize"]):
        assert np.array_equal(output[~mask], composite[~mask])
        assert not np.array_equal(output[mask], composite[mask])  # and the foreground was edited


def test_the_python_default_keeps_the_detail_too(tiny_pipe, textured_files):
    _, _, composite, mask = textured_files
    config = HarmonizeConfig(steps=2, size=64, use_edges=False)
    guided = zsharm.harmonize(composite, mask, "cat bright", "cat dull", pipe=tiny_pipe, config=config,
                              evaluator=None, progress=False)
    resized = zsharm.Harmonizer(pipe=tiny_pipe, config=config.replace(transfer="resize"), evaluator=None,
                                progress=False)(composite, mask, "cat bright", "cat dull")
    assert len(guided.iterations) == len(resized.iterations) == 1  # no evaluator: one iteration unless told
    # the same work-size edit (same seed, same model): only the transfer differs
    assert np.array_equal(np.asarray(guided.work_image), np.asarray(resized.work_image))
    kept = texture_kept(np.asarray(guided.image), composite, mask)
    lost = texture_kept(np.asarray(resized.image), composite, mask)
    assert kept > 0.5 > 0.1 > lost, (kept, lost)


@pytest.mark.parametrize("entry", ["harmonize", "run_iteration"])
def test_the_full_resolution_output_carries_the_work_size_change_not_its_inverse(tiny_pipe, textured_files, entry):
    """Downsized to the work size and smoothed, the output's foreground is the kept work image's, far from the
    composite's: before and after were not swapped on the way up."""
    from zsharm.edit.iteration import run_iteration
    _, _, composite, mask = textured_files
    config = HarmonizeConfig(steps=2, size=64, use_edges=False)
    if entry == "harmonize":
        result = zsharm.harmonize(composite, mask, "cat bright", "cat dull", pipe=tiny_pipe, config=config,
                                  evaluator=None, progress=False)
    else:
        result = run_iteration(tiny_pipe, composite, mask, "cat bright", "cat dull", config, progress=False)
    size = result.work_image.size
    smooth = lambda rgb: cv2.GaussianBlur(np.asarray(rgb).astype(np.float32), (0, 0), 2)  # noqa: E731
    work = smooth(result.work_image)
    small_out = smooth(cv2.resize(np.asarray(result.image), size, interpolation=cv2.INTER_AREA))
    small_in = smooth(cv2.resize(composite, size, interpolation=cv2.INTER_AREA))
    inside = cv2.erode(cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST),
                       np.ones((5, 5), np.uint8)).astype(bool)
    change = np.abs(work - small_in)[inside].mean()
    assert change > 20  # the tiny model changes the foreground a lot (measured: 76 grey levels)
    assert np.abs(small_out - work)[inside].mean() < 0.3 * change  # measured: 11


# ---------------------------------------------------------------- the loop across a Regenerate


class ScriptedEvaluator:
    """Stage 3 with scores given in the order images are scored; it records how it was asked."""

    name = "scripted"

    def __init__(self, scores):
        self.scores, self.asked = list(scores), []

    def score(self, image, mask):
        self.asked.append(np.asarray(image).copy())
        return self.scores.pop(0)


# Records (in run order): 0 c0 it0 0.50 kept | 1 c1 it0 0.30 dropped | 2 it1 0.60 | 3 it2 0.55 | 4 it3 0.50:
# [.5 .6 .55 .5] fell twice -> Regenerate to c1, back to record 2's image (scored .6, two iterations earlier) |
# 5 it4 0.45: a fresh run, [.45] -> continue (mixed with c0's scores, .55 > .5 > .45 would conclude here) |
# 6 it5 0.50 | 7 it6 0.40 -> [.45 .5 .4] continue | 8 it7 0.35 -> [.5 .4 .35] conclude. Best: record 2 (0.60).
SCRIPT = [0.50, 0.30, 0.60, 0.55, 0.50, 0.45, 0.50, 0.40, 0.35, 0.99]
DECISIONS = ["continue", "drop", "continue", "continue", "regenerate", "continue", "continue", "continue", "conclude"]
# which record's image each record started from (None: the composite at work size), and its description
STARTS = [None, None, 0, 2, 3, 2, 5, 6, 7]
DESCRIPTION = [0, 1, 0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("schedule", ["fast", "paper"])
def test_each_iteration_starts_from_the_right_image_and_description_across_a_regenerate(tiny_pipe, textured_files,
                                                                                        schedule, tmp_path):
    _, _, composite, mask = textured_files
    config = HarmonizeConfig.named(schedule, steps=2, size=64, use_edges=False)
    evaluator = ScriptedEvaluator(SCRIPT)
    result = zsharm.Harmonizer(pipe=tiny_pipe, config=config, evaluator=evaluator, progress=False)(
        composite, mask, candidates=TWO_DESCRIPTIONS, history_dir=tmp_path)
    history, runs = result.loop.history, result.iterations
    assert [r.decision for r in history] == DECISIONS
    assert [r.score for r in history] == SCRIPT[:len(DECISIONS)]
    assert len(runs) == len(history)
    outputs = [np.asarray(run.work_image) for run in runs]
    assert len({o.tobytes() for o in outputs}) == len(outputs)  # every image tells which run made it
    # the authors go on from the JPEG they re-open after iteration 0 and on Regenerate; fast from memory
    reopened = {2, 5} if schedule == "paper" else set()
    start = np.asarray(runs[0].work_input)
    for index, (run, record) in enumerate(zip(runs, history)):
        came_from = STARTS[index]
        expected = start if came_from is None else outputs[came_from]
        if index in reopened:
            expected = jpeg_round_trip(Image.fromarray(expected))
        assert np.array_equal(np.asarray(run.work_input), expected), f"record {index} started elsewhere"
        assert (run.source, run.target) == TWO_DESCRIPTIONS[DESCRIPTION[index]] == (record.source, record.target)
    # the best-scoring image is the result, carried to full resolution
    assert result.loop.best_index == 2
    assert np.array_equal(np.asarray(result.work_image), outputs[2])
    size = result.work_image.size
    smooth = lambda rgb: cv2.GaussianBlur(np.asarray(rgb).astype(np.float32), (0, 0), 2)  # noqa: E731
    small = smooth(cv2.resize(np.asarray(result.image), size, interpolation=cv2.INTER_AREA))
    inside = runs[0].mask_work
    distances = [np.abs(small - smooth(o))[inside].mean() for o in outputs]
    assert int(np.argmin(distances)) == 2, distances  # the full-resolution output is the best one's, not the last
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["best_index"] == 2 and [r["decision"] for r in saved["iterations"]] == DECISIONS


@pytest.mark.parametrize("schedule", ["fast", "paper"])
def test_the_evaluator_scores_each_blend_as_the_schedule_says(tiny_pipe, textured_files, schedule):
    _, _, composite, mask = textured_files
    config = HarmonizeConfig.named(schedule, steps=2, size=64, use_edges=False)
    evaluator = ScriptedEvaluator([0.5, 0.4, 0.6])
    result = zsharm.Harmonizer(pipe=tiny_pipe, config=config, evaluator=evaluator, progress=False)(
        composite, mask, candidates=TWO_DESCRIPTIONS, iterations=2)
    assert len(evaluator.asked) == 3
    # what was scored is each blend, in the order they were made: in memory (fast), or saved as a JPEG and re-read
    # (paper: evaluator_scoring "saved_jpeg")
    def shown(run):
        blend = run.work_image
        return jpeg_round_trip(blend) if config.evaluator_scoring == "saved_jpeg" else np.asarray(blend)
    assert config.evaluator_scoring == {"fast": "memory", "paper": "saved_jpeg"}[schedule]
    assert all(np.array_equal(image, shown(run)) for image, run in zip(evaluator.asked, result.iterations))


# ---------------------------------------------------------------- which schedule reaches stage 2


@pytest.mark.parametrize("schedule, refine_steps_per_timestep, inversion_rows", [("fast", 1, 1), ("paper", 2, 2)])
def test_the_schedule_asked_for_on_the_command_line_is_the_one_stage_two_runs(textured_files, tmp_path, schedule,
                                                                              refine_steps_per_timestep,
                                                                              inversion_rows):
    """--schedule and --steps reach the edit: its recorded losses and model calls are that schedule's."""
    comp, mask_file, _, _ = textured_files
    npz = tmp_path / "iteration.npz"
    code = main(["harmonize", str(comp), "--mask", str(mask_file), "--out", str(tmp_path / "out.png"),
                 "--no-evaluator", "--source", "cat bright", "--target", "cat dull", "--save-intermediates", str(npz),
                 "--schedule", schedule, *TINY, "--steps", "3"])
    assert code == 0
    losses = json.loads(npz.with_suffix(".losses.json").read_text())
    counts = json.loads(npz.with_suffix(".counts.json").read_text())
    with np.load(npz) as arrays:
        assert arrays["inversion_latents"].shape[0] == 3  # --steps 3, not the schedule's 20 or 50
    transitions = 3 - 1  # the model runs between consecutive timesteps
    assert len(losses["text_opt"]) == transitions * refine_steps_per_timestep  # refine_iters: fast 1, paper 2
    inversion_images = sum(n for key, n in counts.items() if key.startswith("inversion/unet_images"))
    assert inversion_images == transitions * inversion_rows  # paper inverts both halves of the batch, as the authors
