"""Attention control through diffusers attention processors (Prompt-to-Prompt's controller idea).

A controller sees each attention map the UNet computes and may return a changed one. Every attention layer
gets a `ControlledAttnProcessor` for the duration of a `with controlled_attention(unet, controller):` block;
the UNet's own processors come back afterwards, whatever happens inside.

Maps are (batch, heads, queries, keys). The UNet batch is [unconditional rows..., conditional rows...];
controllers look at the conditional half only, as the authors' code does.

Materialising a map costs memory and time, so a controller says which maps it needs (`needs_map`). The rest
run through fused attention (scaled_dot_product_attention) when the processor is built with `fused=True`;
an edit that replaces the target's map by the source's is then computed as softmax(Q_src K_src^T) V_tgt by
giving the target rows the source rows' queries and keys (`swap_rows`), with no map materialised.
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F


class AttentionControl:
    """Base controller: sees every map, changes none. `step()` is called once per UNet call."""

    def __init__(self):
        self.cur_step = 0

    def step(self):
        self.cur_step += 1

    def needs_map(self, is_cross: bool, place: str, num_queries: int) -> bool:
        return False

    def swap_rows(self, is_cross: bool, batch: int):
        """[(target_row, source_row), ...]: rows whose queries and keys come from another row, or None."""
        return None

    def __call__(self, probs, is_cross: bool, place: str):
        return probs


class AttentionStore(AttentionControl):
    """Keeps the conditional rows' maps with the given numbers of query pixels (e.g. 16*16), per place.

    keep_grad=True keeps them in the autograd graph (text-embedding refinement needs that, one UNet call per
    store); otherwise maps are detached and summed over steps, and `aggregate` gives the per-step mean.
    """

    def __init__(self, num_pixels=(256,), places=("down", "up"), cross=True, self_attn=False, keep_grad=False,
                 cond_rows_only_batch=False):
        super().__init__()
        self.cond_rows_only_batch = cond_rows_only_batch  # the UNet batch holds conditional rows only
        self.num_pixels, self.places = set(num_pixels), tuple(places)
        self.cross, self.self_attn, self.keep_grad = cross, self_attn, keep_grad
        self.maps = {}    # (place, is_cross) -> list of maps in call order, (rows, heads, queries, keys)
        self._layer = {}  # (place, is_cross) -> index of the next layer within the current step

    def needs_map(self, is_cross, place, num_queries):
        wanted = self.cross if is_cross else self.self_attn
        return wanted and place in self.places and num_queries in self.num_pixels

    def step(self):
        super().step()
        self._layer = {}

    def __call__(self, probs, is_cross, place):
        if self.needs_map(is_cross, place, probs.shape[2]):
            cond = probs if self.cond_rows_only_batch else probs[probs.shape[0] // 2:]
            key = (place, is_cross)
            store = self.maps.setdefault(key, [])
            i = self._layer.get(key, 0)
            self._layer[key] = i + 1
            if self.keep_grad:
                store.append(cond)
            elif i >= len(store):
                store.append(cond.detach().clone())
            else:
                store[i] += cond.detach()
        return probs

    def aggregate(self, shape, row: int, is_cross: bool = True, places=("up", "down")):
        """The mean map over layers and heads with `shape` = (h, w) query pixels for conditional row `row`:
        h x w x keys.

        Layers are concatenated in the authors' order (up blocks, then down blocks) before the mean, so that
        every head of every layer weighs the same."""
        h, w = shape
        chunks = [maps[row].reshape(maps.shape[1], h, w, maps.shape[-1])
                  for place in places for maps in self.maps.get((place, is_cross), [])
                  if maps.shape[2] == h * w]
        if not chunks:
            raise ValueError(f"no {h}x{w} {'cross' if is_cross else 'self'}-attention maps were stored")
        stacked = torch.cat(chunks, dim=0)
        mean = stacked.sum(0) / stacked.shape[0]
        return mean if self.keep_grad else mean / max(self.cur_step, 1)


class AttentionReplace(AttentionControl):
    """Prompt-to-Prompt word swap for two prompts (source, target) in one batch.

    The target's cross-attention maps (every word) become the source's for the first `cross_steps` steps, and
    its self-attention maps (every resolution, unlike the original P2P code) for the first `self_steps` steps.
    Only conditional rows are touched; unconditional predictions of both branches run unchanged.
    """

    def __init__(self, cross_steps: int, self_steps: int, store: AttentionStore = None):
        super().__init__()
        self.cross_steps, self.self_steps, self.store = cross_steps, self_steps, store

    def _replacing(self, is_cross):
        return self.cur_step < (self.cross_steps if is_cross else self.self_steps)

    def needs_map(self, is_cross, place, num_queries):
        return self.store is not None and self.store.needs_map(is_cross, place, num_queries)

    def swap_rows(self, is_cross, batch):
        if not self._replacing(is_cross):
            return None
        half = batch // 2  # rows: [uncond src, uncond tgt, cond src, cond tgt]
        return [(half + r, half) for r in range(1, half)]

    def step(self):
        super().step()
        if self.store is not None:
            self.store.step()

    def __call__(self, probs, is_cross, place):
        if self.store is not None:
            self.store(probs, is_cross, place)
        if self._replacing(is_cross):
            half = probs.shape[0] // 2
            probs = probs.clone()
            probs[half + 1:] = probs[half:half + 1]
        return probs


class ControlledAttnProcessor:
    """Attention with a controller between softmax and the value product. Handles the plain attention layers
    of SD 1.x/2.x UNets (no group norm, spatial norm or residual inside the attention module)."""

    def __init__(self, controller: AttentionControl, place: str, fused: bool = False):
        self.controller, self.place, self.fused = controller, place, fused

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        b, n, _ = hidden_states.shape
        heads = attn.heads
        q = attn.to_q(hidden_states).view(b, n, heads, -1).transpose(1, 2)
        k = attn.to_k(context).view(b, context.shape[1], heads, -1).transpose(1, 2)
        v = attn.to_v(context).view(b, context.shape[1], heads, -1).transpose(1, 2)
        control = self.controller
        if self.fused and not control.needs_map(is_cross, self.place, n):
            swaps = control.swap_rows(is_cross, b)
            if swaps:
                q, k = q.clone(), k.clone()
                for dst, src in swaps:
                    q[dst], k[dst] = q[src], k[src]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=attn.scale)
        else:
            # the authors' arithmetic: similarity times scale, softmax, then the controller
            sim = torch.einsum("bhid,bhjd->bhij", q, k) * attn.scale
            if attention_mask is not None:
                sim = sim + attention_mask
            probs = control(sim.softmax(dim=-1), is_cross, self.place)
            out = torch.einsum("bhij,bhjd->bhid", probs, v)
        out = out.transpose(1, 2).reshape(b, n, -1)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


def place_of(name: str) -> str:
    return "down" if name.startswith("down") else "up" if name.startswith("up") else "mid"


@contextmanager
def controlled_attention(unet, controller: AttentionControl, fused: bool = False):
    """Route every attention layer of `unet` through `controller`; restore the UNet's processors after."""
    saved = unet.attn_processors
    unet.set_attn_processor({name: ControlledAttnProcessor(controller, place_of(name), fused) for name in saved})
    try:
        yield controller
    finally:
        unet.set_attn_processor(saved)


@contextmanager
def authors_attention(unet, stage: str):
    """The attention arithmetic the authors' code ran with, for the `paper` schedule's exact numbers.

    Their DDIM inversion ran diffusers 0.9's own attention (scores by baddbmm, as diffusers' classic
    AttnProcessor still computes them); every later stage ran their patched forward (einsum, softmax), which
    ControlledAttnProcessor reproduces. The two round differently, and a strong UNet amplifies the difference.
    """
    from diffusers.models.attention_processor import AttnProcessor
    if stage == "inversion":
        saved = unet.attn_processors
        unet.set_attn_processor(AttnProcessor())
        try:
            yield
        finally:
            unet.set_attn_processor(saved)
    else:
        with controlled_attention(unet, AttentionControl()):
            yield
