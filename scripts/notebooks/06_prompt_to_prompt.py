# %% [markdown]
# # 06 · Prompt-to-Prompt editing: what attention replacement keeps
#
# **What this notebook teaches.** Step 2.4 of the method edits the foreground by denoising *two* branches
# side by side from the inverted latent: the source branch with the source description (it reconstructs the
# input) and the target branch with the target description (it becomes the edit). If the target branch ran
# freely, the new words would redraw the object. Prompt-to-Prompt (Hertz et al. 2022) makes the target
# branch reuse the source branch's attention maps, so only the description's *meaning* changes the result.
# We switch the two kinds of replacement on and off and see what each keeps.

# %% cost {"iterations": 1, "unet_images": 2164, "vae_decodes": 9, "memory": "paper"}

# %% install

# %% tags=["parameters"]
import os

MODEL = os.environ.get("ZSHARM_MODEL", "auto")   # auto: SD 2 base where it can run (a GPU), else the toy prior
QUICK = os.environ.get("ZSHARM_QUICK") == "1"   # the tests' run: a tiny model, 4 steps at 128 px
FULL = False                                     # True: the paper's settings everywhere (zsharm.teaching.setup)
DEVICE = None                                    # None: CUDA if there is one, else Apple MPS, else CPU
FRACTIONS = (0.0, 0.5, 1.0)                      # the grid of cross- and self-replacement fractions

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

from zsharm.edit.pidinet import load_pidinet
from zsharm.teaching.plots import show_images
from zsharm.teaching.setup import setup

course = setup(MODEL, DEVICE, quick=QUICK, full=FULL)
pipe, config = course.pipe, course.config()
pidinet = load_pidinet(variant="tiny", device=pipe.device)  # beside the UNet
image, mask, source, target = course.image, course.mask, course.source, course.target

# %% [markdown]
# ## Two branches, one batch
#
# At every step the UNet runs on a batch of four rows: the unconditional and conditional rows of the source
# branch and of the target branch. Each branch gets its own refined text embedding and the optimised null
# embedding of that step (notebooks 02 and 04); guidance 2.5 combines each branch's two rows.
#
# The controller `AttentionReplace` then edits the maps of the **conditional target row** only:
#
# * **cross-attention replacement** (all words, for the first `cross_replace_steps` of the steps): the target
#   row uses the source row's maps $A^{src}$ with its *own* values $V^{tgt}$, i.e.
#   $\mathrm{out}^{tgt} = A^{src} V^{tgt}$. Each region keeps attending to the same word positions, but the
#   words now mean the target description: the *layout* of meaning is kept, the meaning changes;
# * **self-attention replacement** (every resolution, for the first `self_replace_steps`): every pixel draws
#   its features from the same pixels as in the source branch, which keeps the image's *structure*. Unlike
#   the original Prompt-to-Prompt code, the authors replace self-attention at every resolution, not only at
#   16x16 ([docs/method.md](../docs/method.md), section 2.4).
#
# The controller's core line, in `zsharm.edit.attention` (`AttentionReplace`), is one assignment on the
# attention probabilities of a layer, shaped (branch, heads, pixels, keys), before they multiply the values:
#
# ```python
# attn[target_row] = attn[source_row]        # cross: the source's word layout; self: its pixel layout
# out = attn @ v                              # v of the target row: the target words' meaning
# ```
#
# **Token alignment.** Copying maps token by token only makes sense if position $j$ means the same role in
# both prompts. The method's descriptions are built for that: the same object word first, then the condition
# words ("astronaut bright warm indoor" vs "astronaut dim blue twilight"), so position 1 is the object in both
# and positions 2+ are the conditions. Prompt-to-Prompt's general word-swap case maps the source tokens to the
# target's with an alignment table (a word split into several tokens, insertions); here the map is the
# identity for the object and the start token, and the condition tokens' maps are copied position by position:
# the target's condition words inherit *where* the source's looked (the foreground, after refinement) while
# their values bring the target's meaning. `zsharm.edit.tokens.word_token_spans` shows each word's positions;
# a word the tokenizer splits ("greyscale" -> "grey", "scale") takes two.
#
# The unconditional rows of both branches run unchanged. After the edit, the blend keeps the background:
# $I_{out} = M \odot I_{edit} + (1 - M) \odot I_{in}$.

# %% [markdown]
# ## One iteration, then only the edit again
#
# Replacement acts in the last stage only, so we run one full iteration (inversion, refinement, null text,
# edit) and then repeat *only* the Prompt-to-Prompt edit for each pair of fractions of a small grid, reusing
# the inversion, the refined embeddings and the null text. `replacement_views` does that and keeps each
# target branch and its blend.

# %%
from zsharm.edit.iteration import run_iteration
from zsharm.teaching.widgets import replacement_explorer, replacement_views

kept = run_iteration(pipe, image, mask, source, target, config, progress=False, keep_maps=True, pidinet=pidinet)
grid = replacement_views(pipe, kept, config, crosses=FRACTIONS, selfs=FRACTIONS)
low, high = FRACTIONS[0], FRACTIONS[-1]
variants = {"cross + self (the method)": (high, high), "cross only": (high, low), "self only": (low, high),
            "no replacement": (low, low)}
show_images([grid.work_input, grid.source_branch] + [grid.target_branch[k] for k in variants.values()],
            ["input", "source branch (reconstruction)"] + [f"target branch:\n{name}" for name in variants],
            ncols=3, size=3.6, suptitle=course.caption("The two branches under four replacements"))
plt.show()

# %% [markdown]
# The source branch is the same in every variant: it only reconstructs the input (through the null-text
# embeddings). The target branches differ. Prompt-to-Prompt's finding, which the method relies on: without
# replacement a new prompt redraws the picture; self-attention replacement holds the structure;
# cross-attention replacement holds which region each word governs.
#
# ## After the blend: structure kept, colour moved
#
# What matters is the blended output. For each variant: how far the edges inside the mask moved from the
# input (Sobel MSE) and how far the colour moved (mean $\Delta E$).

# %%
from zsharm.teaching.plots import colour_shift, structure_change

print(f"{'variant':<28}{'Sobel MSE':>12}{'colour dE':>11}")
for name, key in variants.items():
    out = grid.blended[key]
    print(f"{name:<28}{structure_change(grid.work_input, out, grid.mask_work)['sobel_mse']:>12.2e}"
          f"{colour_shift(grid.work_input, out, grid.mask_work):>11.2f}")

# %% [markdown]
# ## The replacement, as a processor you can run
#
# Prompt-to-Prompt is one line inside attention: after the softmax, the target's conditional map becomes the
# source's. Below is a complete attention processor doing that for the first `cross_steps` steps of the
# cross-attention layers and the first `self_steps` of the self-attention ones, and the denoising loop that
# runs both branches with it. We run it on the iteration above (its inversion, refined embeddings and
# optimised null text) and check that it gives the library's edit.

# %%
import torch

from zsharm.edit.diffusion import Run, ddim_step, unet_noise
from zsharm.edit.prompt_to_prompt import edit_with_prompt_to_prompt, replacement_steps


class ReplacementProcessor:
    def __init__(self, clock, cross_steps, self_steps):
        self.clock, self.cross_steps, self.self_steps = clock, cross_steps, self_steps

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        b, n, _ = hidden_states.shape
        q, k, v = (f(x).view(b, x.shape[1], attn.heads, -1).transpose(1, 2)
                   for f, x in ((attn.to_q, hidden_states), (attn.to_k, context), (attn.to_v, context)))
        probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)
        if self.clock["step"] < (self.cross_steps if is_cross else self.self_steps):
            # rows: [uncond source, uncond target, cond source, cond target]; only the conditional target changes
            probs = probs.clone()
            probs[b // 2 + 1:] = probs[b // 2]
        out = (probs @ v).transpose(1, 2).reshape(b, n, -1)
        return attn.to_out[1](attn.to_out[0](out))


def edit_by_hand(config):
    run = Run(pipe=pipe, config=config, progress=False)
    clock, saved = {"step": 0}, pipe.unet.attn_processors
    pipe.unet.set_attn_processor({name: ReplacementProcessor(clock, *replacement_steps(config)) for name in saved})
    try:
        with torch.no_grad():
            z = inv.x_t.expand(2, *inv.x_t.shape[1:])                           # both branches start at x_T
            for index, t in enumerate(inv.timesteps[1:]):
                context = torch.cat([nulls[index]] * 2 + [embeddings[index]])   # [null, null, source, target]
                noise = unet_noise(run, "notebook", z, t, context, config.guidance)
                clock["step"] += 1
                z = ddim_step(run, noise, t, z)
    finally:
        pipe.unet.set_attn_processor(saved)
    return z


inv, embeddings, nulls = kept.inversion, kept.refinement.embeddings, kept.nulltext.uncond
# a grid point where replacement stops part of the way, so the step counting is checked too
partial = config.replace(cross_replace_steps=FRACTIONS[len(FRACTIONS) // 2],
                         self_replace_steps=FRACTIONS[len(FRACTIONS) // 2])
for checked in (config, partial):
    mine = edit_by_hand(checked)
    with torch.no_grad():
        library = edit_with_prompt_to_prompt(Run(pipe=pipe, config=checked, progress=False), inv, embeddings, nulls).latents[-1]
    difference = ((mine - library).abs().max() / library.abs().max()).item()
    assert difference <= (1e-5 if library.dtype == torch.float32 else 5e-3), difference
    cross, self_ = replacement_steps(checked)
    print(f"cross maps replaced for {cross} steps, self maps for {self_}: the final latents differ from the "
          f"library's edit by {difference:.1e} of their largest value")

# %% [markdown]
# ## Explore the grid
#
# Both fractions over the grid (computed once; no model call when a control moves): the target branch, its
# blend, and the difference between the target branch and a reference of your choice (the source branch, the
# method's full replacement, or no replacement).

# %%
replacement_explorer(grid)

# %% [markdown]
# ## The maps of the two branches
#
# With `keep_maps=True` the edit also returns an `AttentionStore` with the image/32 cross-attention maps of
# both conditional rows, averaged over steps. The store sees each map *before* the replacement, i.e. what
# the target row would have attended to on its own, computed from its features (which themselves come from
# the replaced maps of earlier layers).

# %%
from zsharm.edit.tokens import word_token_spans
from zsharm.teaching.plots import plot_word_maps

h, w = kept.edit.latents[-1].shape[-2] * 8 // config.attention_res_divisor, kept.edit.latents[-1].shape[-1] * 8 // config.attention_res_divisor
for row, prompt in enumerate([source, target]):
    plot_word_maps(kept.work_input, kept.edit.maps.aggregate((h, w), row=row), word_token_spans(pipe.tokenizer, prompt),
                   mask=kept.mask_work, title=course.caption(f'{"source" if row == 0 else "target"} branch: "{prompt}"'))
    plt.show()

# %% [markdown]
# ## What real weights show
#
# With Stable Diffusion 2 base at 50 steps: the source branch reproduces the input almost exactly (null
# text's job). Without replacement the target branch is a different picture: another astronaut, another pose,
# the twilight prompt redrawn from scratch. Self replacement alone keeps the pose and outline but lets the
# words' regions wander; cross replacement alone keeps which region each word governs but loses fine
# structure. With both, the target branch is the input recoloured towards dim blue twilight. In the explorer,
# the difference to the source branch should be broad and smooth (a colour change) for the method and
# detailed and everywhere (a redraw) for no replacement. Prompt-to-Prompt's paper (Hertz et al. 2022) shows
# the same progression for its word swaps. On the tiny model the differences are noise.

# %% [markdown]
# ## Exercises
#
# 1. Replace cross-attention for only the first half of the steps (`cross_replace_steps=0.5`). What changes
#    in the target branch, and in the blend?
#    <details><summary>Hint</summary>It is on the grid already: set the explorer's cross fraction to 0.5 and
#    compare against "the method".</details>
# 2. The original Prompt-to-Prompt replaced self-attention only in the 16x16 layers. Which parts of the
#    picture would you expect to change more if fine layers were left free?
#    <details><summary>Hint</summary>Fine layers carry texture and edges; coarse ones layout. Think of which
#    of the two the edit should keep.</details>
# 3. Swap the roles: edit from the target description back to the source one. Do you get the input back?
#    <details><summary>Hint</summary>Run <code>run_iteration(pipe, kept.image, mask, target, source, config)</code>
#    and measure <code>colour_shift</code> against the original; each iteration inverts its own input.</details>
# 4. Why does replacement touch only the conditional rows? Hint: what would guidance compute if the
#    unconditional rows of the target branch also copied the source's maps?
#    <details><summary>Hint</summary>Guidance is uncond + w (cond - uncond). The unconditional rows of the two
#    branches see the same empty prompt; the question is what makes the target's cond row differ.</details>
# 5. **Graded:** With cross_replace_steps=0.8, self_replace_steps=0.4 and 50 steps, for how many steps are the cross- and the self-attention maps replaced? (cross, self) Put your answer in `ANSWER` below; the check cell says whether it is right.
#    <details><summary>Hint</summary><code>zsharm.edit.prompt_to_prompt.replacement_steps</code> holds the authors' rounding.</details>

# %%
from zsharm.teaching.exercises import check

ANSWER = None  # your answer to exercise 5
right = check("06", ANSWER)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# ANSWER = (int(0.8 * 51), int(0.4 * 50))  # (40, 20)
# ```
#
# Cross maps count steps + 1, self maps steps, as the authors' code does.
# </details>
