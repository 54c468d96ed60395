"""Null-text optimisation with the edge loss (stage 2.3): what it optimises, against what, with which gradient.

    L = 10 * MSE(z_{t-1}, z*_{t-1}) + || E_S(I) - E_S(I') ||^2 + gamma * || E_D(I) - E_D(I') ||^2   (inside M)
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import edit_inputs, make_composite, recorded_unet_calls
from PIL import Image

from zsharm.config import HarmonizeConfig
from zsharm.edit.diffusion import Run, ddim_step, text_embeddings, unet_noise
from zsharm.edit.edges import sobel
from zsharm.edit.diffusion import image_to_tensor
from zsharm.edit.iteration import run_iteration
from zsharm.edit.nulltext import EdgeLoss, optimize_null_text

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEDULES = {"paper": HarmonizeConfig.paper, "fast": HarmonizeConfig.fast}
PROMPTS = ("cat bright", "cat winter dull")


def composite(size=128):
    image, mask = make_composite(width=size, height=size)
    return Image.fromarray(image), mask


def pixels01(image):
    return (image_to_tensor(image) + 1) / 2


def edge_loss_for(pipe, config, pidinet=None):
    image, mask = composite()
    run = Run(pipe=pipe, config=config, progress=False)
    loss = EdgeLoss(run, image, mask, pidinet)
    return loss, pixels01(image), mask


def in_box(loss, image01):
    """The part of a full-size image the edge loss compares (fast compares the mask's box only)."""
    if loss.crop is None:
        return image01
    y0, y1, x0, x1 = (8 * v for v in loss.crop)
    return image01[..., y0:y1, x0:x1]


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_null_text_reconstructs_the_source_branch(tiny_pipe, schedule):
    """The optimised null embeddings are made for the source prompt: the editing stage's source branch, which
    denoises with them and the source's embeddings, retraces the null-text trajectory step for step, while the
    target branch leaves it."""
    cfg = SCHEDULES[schedule](steps=4, size=128, dtype="fp32", use_edges=False)
    image, mask = composite()
    res = run_iteration(tiny_pipe, image, mask, *PROMPTS, cfg, progress=False)
    assert len(res.nulltext.latents) == len(res.edit.latents) == 3
    for step, (ours, edited) in enumerate(zip(res.nulltext.latents, res.edit.latents)):
        source = edited[0]
        assert torch.allclose(source, ours[0], atol=1e-5), (step, float((source - ours[0]).abs().max()))
    assert (res.edit.latents[-1][1] - res.nulltext.latents[-1][0]).abs().max() > 1e-3  # the edit moved
    assert np.abs(res.edit.images[0].astype(int) - res.nulltext.reconstruction.astype(int)).max() <= 1


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_each_null_text_step_aims_at_the_next_inverted_latent(tiny_pipe, schedule):
    """The latent term of step i compares the guided step from where the reconstruction stands with the inverted
    latent one timestep less noisy, z*_{t-1}: recomputed here from the step's inputs, it is the logged value."""
    cfg = SCHEDULES[schedule](steps=4, size=128, dtype="fp32", use_edges=False, refine=False)
    image, mask = composite()
    res = run_iteration(tiny_pipe, image, mask, *PROMPTS, cfg, progress=False)
    run = Run(pipe=tiny_pipe, config=cfg, progress=False)
    inverted, timesteps = res.inversion.latents, res.inversion.timesteps
    with torch.no_grad():
        text = text_embeddings(run, "test", list(PROMPTS))[:1]
        null = text_embeddings(run, "test", [""])
        for i in range(len(res.nulltext.latents)):
            start = res.inversion.x_t if i == 0 else res.nulltext.latents[i - 1]
            before = null if i == 0 else res.nulltext.uncond[i - 1]  # the null embedding the step starts from
            with run.arithmetic("nulltext"):
                noise = unet_noise(run, "test", start, timesteps[1 + i], torch.cat([before, text]), cfg.guidance)
            out = ddim_step(run, noise, timesteps[1 + i], start)
            logged = next(r["null_text_mse"] for r in res.nulltext.losses if r["step"] == i and r["iter"] == 0)
            aimed, beside = (F.mse_loss(out, inverted[k]).item() for k in (-2 - i, -1 - i))
            assert logged == pytest.approx(aimed, rel=1e-3), (i, logged, aimed, beside)
            assert abs(aimed - beside) > 0.1 * aimed


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_null_text_conditions_on_the_source_embedding_of_each_step(tiny_pipe, schedule):
    """Every UNet call of step i conditions on the source's embedding of step i, with the null embedding being
    optimised, except in `paper` the first inner step of each later timestep: the authors update the text
    embedding after that step, so it still sees step i-1's."""
    cfg = SCHEDULES[schedule](steps=4, size=128, dtype="fp32", nulltext_early_stop=0.0)
    run, inversion, embeddings, _ = edit_inputs(tiny_pipe, cfg)
    with recorded_unet_calls(tiny_pipe.unet) as calls:
        result = optimize_null_text(run, inversion, embeddings)
    per_step = [cfg.nulltext_inner_steps(i) + 1 for i in range(len(embeddings))]  # inner steps, then the step
    assert len(calls) == sum(per_step)
    k = 0
    for i, n in enumerate(per_step):
        for j in range(n):
            _, t, context, _ = calls[k + j]
            assert t == inversion.timesteps[1 + i]
            expected = embeddings[i - 1 if (schedule == "paper" and i > 0 and j == 0) else i][:1]
            assert torch.equal(context[1:], expected), (i, j)
        assert torch.equal(calls[k + n - 1][2][:1], result.uncond[i]), i  # the step taken with its optimum
        k += n


def test_paper_takes_i_div_10_plus_1_inner_steps_at_timestep_i(tiny_pipe):
    cfg = HarmonizeConfig.paper(steps=13, size=64, use_edges=False, refine=False)
    image, mask = make_composite(width=64, height=64)
    res = run_iteration(tiny_pipe, image, mask, *PROMPTS, cfg, progress=False)
    per_step = [sum(r["step"] == i for r in res.nulltext.losses) for i in range(cfg.steps - 1)]
    assert per_step == [1] * 10 + [2] * 2


def test_paper_compares_the_inputs_sobel_on_minus_one_to_one_pixels_fast_on_zero_to_one(tiny_pipe):
    """The authors take the Sobel map of the input on its [-1, 1] pixels and the prediction's on [0, 1] ones,
    so in `paper` even a perfect prediction leaves a Sobel term; `fast` compares like with like."""
    for schedule in ("paper", "fast"):
        loss, image01, mask = edge_loss_for(tiny_pipe, SCHEDULES[schedule](size=128, dtype="fp32"))
        _, terms = loss(in_box(loss, image01))
        if schedule == "fast":
            assert terms["sobel_mse"] == pytest.approx(0.0, abs=1e-12)
        else:
            m = torch.from_numpy(mask.astype(np.float32))[None, None]
            expected = F.mse_loss(sobel(image01) * m, sobel(image01 * 2 - 1) * m).item()
            assert expected > 1e-4 and terms["sobel_mse"] == pytest.approx(expected, rel=1e-5)


def test_edge_loss_reads_the_prediction_inside_the_mask_only(tiny_pipe):
    loss, image01, mask = edge_loss_for(tiny_pipe, HarmonizeConfig.fast(size=128, dtype="fp32", edge_crop=False))
    far = ~torch.from_numpy(mask)
    for _ in range(2):  # grow the outside region's margin past Sobel's 3x3 reach
        far = far & ~(F.max_pool2d((~far).float()[None, None], 3, 1, 1)[0, 0] > 0)
    noise = 0.2 * torch.randn(image01.shape, generator=torch.Generator().manual_seed(0))
    base = loss(image01)[0].item()
    assert loss(image01 + noise * far)[0].item() == pytest.approx(base, abs=1e-9)
    assert loss(image01 + noise * ~far)[0].item() > base + 1e-4


def pidinet_gradient(pipe, config, pidinet, gamma):
    loss, image01, _ = edge_loss_for(pipe, config.replace(edge_pidinet_weight=gamma), pidinet)
    noise = torch.randn(image01.shape, generator=torch.Generator().manual_seed(1))
    pred = in_box(loss, (image01 + 0.05 * noise).clamp(0, 1)).requires_grad_(True)
    value, terms = loss(pred)
    value.backward()
    return value.item(), pred.grad, terms


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_pidinet_term_has_a_gradient_in_fast_and_only_a_value_in_paper(tiny_pipe, random_edges, schedule):
    """`fast` backpropagates through PiDiNet, so gamma weighs a gradient; the authors run it under no_grad, so in
    `paper` gamma changes the loss's value and nothing it optimises."""
    cfg = SCHEDULES[schedule](size=128, dtype="fp32")
    v0, g0, terms = pidinet_gradient(tiny_pipe, cfg, random_edges, 0.0)
    v1, g1, _ = pidinet_gradient(tiny_pipe, cfg, random_edges, 1.0)
    assert v1 - v0 == pytest.approx(terms["pidinet_edge_mse"], rel=1e-4) and terms["pidinet_edge_mse"] > 0
    if schedule == "fast":
        assert (g1 - g0).abs().max() > 1e-3 * g0.abs().max()
    else:
        assert torch.equal(g1, g0)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_gamma_changes_the_null_embeddings_in_fast_but_not_in_paper(tiny_pipe, random_edges, schedule):
    cfg = SCHEDULES[schedule](steps=3, size=128, dtype="fp32", refine=False, nulltext_early_stop=0.0)
    image, mask = composite()
    uncond = {}
    for gamma in (0.0, 1.0):
        res = run_iteration(tiny_pipe, image, mask, *PROMPTS, cfg.replace(edge_pidinet_weight=gamma),
                            progress=False, pidinet=random_edges)
        uncond[gamma] = torch.stack(res.nulltext.uncond)
    change = float((uncond[1.0] - uncond[0.0]).abs().max())
    if schedule == "fast":
        assert change > 1e-6
    else:
        assert change == 0.0


def test_a_third_loss_term_named_in_the_configuration_joins_the_optimisation(tiny_pipe, random_edges):
    """A term of the tests' own (tests/colour_term.py), named in the configuration and nowhere else, is added to
    the latent MSE and the edge loss: its part is in every record, the total holds it, and the result moves."""
    base = HarmonizeConfig.fast(steps=3, size=64, dtype="fp32", refine=False, nulltext_early_stop=0.0)
    image, mask = make_composite(width=64, height=64)
    runs = {}
    for label, terms in (("edges", ("edges",)), ("edges+colour", ("edges", "colour_term:ColourHistogramLoss"))):
        runs[label] = run_iteration(tiny_pipe, image, mask, *PROMPTS, base.replace(nulltext_terms=terms),
                                    progress=False, pidinet=random_edges)
    with_colour = runs["edges+colour"].nulltext.losses
    assert all("colour_histogram_mse" in r and "sobel_mse" in r for r in with_colour)
    assert not any("colour_histogram_mse" in r for r in runs["edges"].nulltext.losses)
    first = with_colour[0]  # before any step the two runs have the same prediction
    assert first["colour_histogram_mse"] > 0
    assert first["total"] == pytest.approx(runs["edges"].nulltext.losses[0]["total"]
                                           + 50.0 * first["colour_histogram_mse"], rel=1e-4)
    assert not torch.equal(runs["edges"].nulltext.uncond[-1], runs["edges+colour"].nulltext.uncond[-1])


def test_an_unknown_loss_term_is_refused_when_the_configuration_is_made():
    with pytest.raises(ValueError, match="colour"):
        HarmonizeConfig(nulltext_terms=("edges", "colour"))
