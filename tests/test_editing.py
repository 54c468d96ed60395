"""Prompt-to-Prompt editing (stage 2.4): the properties behind its equations, observed from outside.

Every UNet call and every attention layer of the editing stage is recorded with forward hooks (nothing is
patched), and what they computed is checked against the method's definitions: the guided prediction with the
configured scale, each step's own null and text embeddings, and the target branch attending with the source
branch's maps for as many steps as the replacement fractions promise, and with its own after.
"""

from contextlib import contextmanager

import pytest
import torch
from conftest import edit_inputs, recorded_unet_calls
from diffusers.models.attention_processor import Attention

from zsharm.config import HarmonizeConfig
from zsharm.edit.prompt_to_prompt import edit_with_prompt_to_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEDULES = {"paper": HarmonizeConfig.paper, "fast": HarmonizeConfig.fast}


def ddim(scheduler, noise, t, latents, steps):
    """The DDIM step (eta 0) written out: x_{t-1} = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps."""
    a = scheduler.alphas_cumprod
    prev = int(t) - scheduler.config.num_train_timesteps // steps
    a_t, a_prev = a[int(t)], (a[prev] if prev >= 0 else scheduler.final_alpha_cumprod)
    x0 = (latents - (1 - a_t).sqrt() * noise) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * noise


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_editing_prediction_is_the_guidance_formula_with_the_configured_scale(tiny_pipe, schedule):
    cfg = SCHEDULES[schedule](steps=4, size=128, guidance=3.5, dtype="fp32")
    run, inversion, embeddings, uncond = edit_inputs(tiny_pipe, cfg)
    with recorded_unet_calls(tiny_pipe.unet) as calls:
        edit = edit_with_prompt_to_prompt(run, inversion, embeddings, uncond)
    assert len(calls) == len(edit.latents) == cfg.steps - 1
    for (x, t, _, out), after in zip(calls, edit.latents):
        no_text, text = out.chunk(2)
        guided = ddim(run.scheduler, no_text + cfg.guidance * (text - no_text), t, x[:2], cfg.steps)
        assert torch.allclose(after, guided, atol=1e-6, rtol=1e-5), float((after - guided).abs().max())
        # the scale matters here: the unguided (scale 1) step lands far outside the tolerance
        plain = ddim(run.scheduler, text, t, x[:2], cfg.steps)
        assert (after - plain).abs().max() > 1e-4


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_each_editing_step_uses_its_own_steps_null_and_text_embeddings(tiny_pipe, schedule):
    cfg = SCHEDULES[schedule](steps=4, size=128, dtype="fp32")
    run, inversion, embeddings, uncond = edit_inputs(tiny_pipe, cfg)
    with recorded_unet_calls(tiny_pipe.unet) as calls:
        edit_with_prompt_to_prompt(run, inversion, embeddings, uncond)
    assert len(calls) == len(uncond) == 3
    for step, (_, t, context, _) in enumerate(calls):
        assert t == inversion.timesteps[1 + step]
        assert torch.equal(context[0], uncond[step][0]) and torch.equal(context[1], uncond[step][0]), step
        assert torch.equal(context[2:], embeddings[step]), step


def attention_out(attn, hidden, context, qk_row, v_row):
    """The attention layer's output for row v_row when its map is softmax(Q K^T * scale) of row qk_row."""
    heads = attn.heads
    split = lambda x: x.view(x.shape[0], heads, -1).transpose(0, 1)
    q, k = split(attn.to_q(hidden[qk_row])), split(attn.to_k(context[qk_row]))
    v = split(attn.to_v(context[v_row]))
    probs = (q @ k.transpose(1, 2) * attn.scale).softmax(-1)
    out = (probs @ v).transpose(0, 1).reshape(hidden.shape[1], -1)
    return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


@contextmanager
def target_attention_sources(unet):
    """Per UNet call, per kind ("self", "cross"): for each attention layer, whether the target branch's
    conditional row (row 3 of [uncond src, uncond tgt, cond src, cond tgt]) attended with the source's map
    ("source"), its own ("own"), or either (when the two coincide, as for identical inputs)."""
    steps = []

    def pre(module, args, kwargs):
        steps.append({"self": [], "cross": []})

    def hook(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        context = kwargs.get("encoder_hidden_states")
        kind = "cross" if context is not None else "self"
        context = hidden if context is None else context
        with torch.no_grad():
            replaced = attention_out(module, hidden, context, qk_row=2, v_row=3)
            own = attention_out(module, hidden, context, qk_row=3, v_row=3)
        tol = 1e-5 * (1 + output[3].abs().max())
        is_source = bool((output[3] - replaced).abs().max() <= tol)
        is_own = bool((output[3] - own).abs().max() <= tol)
        assert is_source or is_own, "the target attended with neither its own map nor the source's"
        steps[-1][kind].append("either" if is_source and is_own else "source" if is_source else "own")

    handles = [unet.register_forward_pre_hook(pre, with_kwargs=True)]
    handles += [m.register_forward_hook(hook, with_kwargs=True) for m in unet.modules() if isinstance(m, Attention)]
    try:
        yield steps
    finally:
        for h in handles:
            h.remove()


def replaced_steps(steps, kind):
    """How many leading steps attended with the source's maps at every layer; the rest must use their own."""
    verdicts = []
    for layers in steps:
        decided = {v for v in layers[kind] if v != "either"}
        assert len(decided) == 1, f"a {kind}-attention step mixed or never showed its maps: {layers[kind]}"
        verdicts.append(decided.pop())
    n = verdicts.count("source")
    assert verdicts == ["source"] * n + ["own"] * (len(verdicts) - n), verdicts
    return n


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("cross, self_", [(1.0, 1.0), (0.5, 0.4), (0.0, 0.8)])
def test_target_attends_with_the_source_maps_for_the_promised_number_of_steps(tiny_pipe, schedule, cross, self_):
    """Prompt-to-Prompt's schedule as the authors run it: cross-attention maps are replaced for the first
    int(f * (steps + 1)) denoising steps (their schedule has one point per timestep plus one), self-attention
    maps for the first int(f * steps); afterwards the target branch attends with its own maps."""
    steps = 6
    cfg = SCHEDULES[schedule](steps=steps, size=128, dtype="fp32", cross_replace_steps=cross,
                              self_replace_steps=self_)
    run, inversion, embeddings, uncond = edit_inputs(tiny_pipe, cfg)
    with target_attention_sources(tiny_pipe.unet) as seen:
        edit_with_prompt_to_prompt(run, inversion, embeddings, uncond)
    editing_steps = steps - 1
    assert len(seen) == editing_steps
    assert replaced_steps(seen, "cross") == min(int(cross * (steps + 1)), editing_steps)
    assert replaced_steps(seen, "self") == min(int(self_ * steps), editing_steps)
