"""Recording attention: every map of the small resolutions per (denoising step, layer, cross or self).

    trace = trace_attention(pipe, image, "astronaut bright warm indoor", config)
    trace.recorder.map(step=3, layer="up1.0")           # h x w x 77, head-averaged, conditional row
    plot_word_maps(trace.image, trace.recorder.mean(), trace.spans)

so a notebook can step through words, layers and timesteps. Everything here reads what the stage modules
compute; nothing here changes the method.
"""


from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zsharm.config import HarmonizeConfig
from zsharm.edit.attention import AttentionControl, ControlledAttnProcessor, place_of
from zsharm.edit.diffusion import (
    Run,
    ddim_step,
    decode_latents,
    text_embeddings,
    to_uint8,
    unet_noise,
)
from zsharm.errors import ZsharmError

# ----------------------------------------------------------------------------- recording attention

def layer_name(processor_name: str) -> str:
    """A short name for an attention layer: "down_blocks.2.attentions.0.transformer_blocks.0.attn2.processor"
    -> "down2.0" (block and transformer within it; attn1/attn2 is the self/cross flag kept beside it)."""
    parts = processor_name.split(".")
    if parts[0] == "mid_block":
        return f"mid.{parts[2]}"
    return f"{parts[0].split('_')[0]}{parts[1]}.{parts[3]}"


class AttentionRecorder(AttentionControl):
    """Keeps the attention maps of chosen resolutions at every step and layer.

    image_hw: the work image's (height, width); cross_res / self_res: the resolutions to keep, as divisors of
    the image (32 means image/32, the 16x16 maps of a 512 px image that L_Emb uses). Maps are averaged over
    heads and kept for the conditional rows only (the second half of a guided batch; `cond_only=False` keeps
    every row), on the CPU, under (step, layer, is_cross). `inner`, if given, is another controller that
    sees (and may change) every map after the recorder, e.g. an `AttentionReplace`.
    """

    def __init__(self, image_hw, cross_res=(32,), self_res=(32,), cond_only: bool = True, inner=None):
        super().__init__()
        h, w = image_hw
        self.shapes = {}  # number of query pixels -> (h, w) of the map
        for d in set(cross_res) | set(self_res):
            if h % d or w % d:
                raise ZsharmError(f"a {w}x{h} image has no image/{d} attention maps")
            self.shapes[(h // d) * (w // d)] = (h // d, w // d)
        self.cross_queries = {(h // d) * (w // d) for d in cross_res}
        self.self_queries = {(h // d) * (w // d) for d in self_res}
        self.cond_only, self.inner = cond_only, inner
        self.layer = None           # set by the processor before each call (see `recording_attention`)
        self.maps = {}              # (step, layer, is_cross) -> rows x h x w x keys
        self._order = []            # (layer, is_cross) in the order the UNet first called them

    def needs_map(self, is_cross, place, num_queries):
        mine = num_queries in (self.cross_queries if is_cross else self.self_queries)
        return mine or (self.inner is not None and self.inner.needs_map(is_cross, place, num_queries))

    def swap_rows(self, is_cross, batch):
        return self.inner.swap_rows(is_cross, batch) if self.inner is not None else None

    def step(self):
        super().step()
        if self.inner is not None:
            self.inner.step()

    def __call__(self, probs, is_cross, place):
        n = probs.shape[2]
        if n in (self.cross_queries if is_cross else self.self_queries):
            rows = probs[probs.shape[0] // 2:] if self.cond_only else probs
            h, w = self.shapes[n]
            kept = rows.detach().float().mean(1).reshape(rows.shape[0], h, w, probs.shape[-1]).cpu()
            key = (self.layer, is_cross)
            if key not in self._order:
                self._order.append(key)
            self.maps[(self.cur_step, self.layer, is_cross)] = kept
        return self.inner(probs, is_cross, place) if self.inner is not None else probs

    @property
    def steps(self) -> list:
        return sorted({step for step, _, _ in self.maps})

    def layers(self, is_cross: bool = True, shape=None) -> list:
        """Recorded layers in the UNet's calling order (down, mid, up), optionally only those of map `shape`."""
        return [layer for layer, cross in self._order if cross == is_cross
                and (shape is None or self.shape_of(layer, is_cross) == tuple(shape))]

    def shape_of(self, layer: str, is_cross: bool = True) -> tuple:
        for (step, name, cross), value in self.maps.items():
            if name == layer and cross == is_cross:
                return tuple(value.shape[1:3])
        raise KeyError(f"no {'cross' if is_cross else 'self'}-attention maps recorded for layer {layer!r}")

    def map(self, step: int, layer: str, is_cross: bool = True, row: int = 0) -> torch.Tensor:
        """One layer's map at one step: h x w x keys (keys: 77 tokens, or h*w pixels for self-attention)."""
        try:
            return self.maps[(step, layer, is_cross)][row]
        except KeyError:
            raise KeyError(f"no map for step {step}, layer {layer!r}, {'cross' if is_cross else 'self'}") from None

    def mean(self, is_cross: bool = True, shape=None, steps=None, layers=None, row: int = 0) -> torch.Tensor:
        """The mean map over steps and layers of one resolution (default: the smallest recorded), as L_Emb
        averages its maps over layers: h x w x keys."""
        if shape is None:
            shape = self.shapes[min(self.cross_queries if is_cross else self.self_queries)]
        layers = self.layers(is_cross, shape) if layers is None else list(layers)
        steps = self.steps if steps is None else list(steps)
        chosen = [self.maps[(s, l, is_cross)][row] for s in steps for l in layers if (s, l, is_cross) in self.maps]
        if not chosen:
            raise ValueError(f"no {shape} {'cross' if is_cross else 'self'}-attention maps for those steps/layers")
        return torch.stack(chosen).mean(0)


class _NamedProcessor(ControlledAttnProcessor):
    """A controlled processor that tells its controller which layer is calling."""

    def __init__(self, controller, name, fused):
        super().__init__(controller, place_of(name), fused)
        self.name = layer_name(name)

    def __call__(self, attn, hidden_states, *args, **kwargs):
        self.controller.layer = self.name
        return super().__call__(attn, hidden_states, *args, **kwargs)


@contextmanager
def recording_attention(unet, recorder: AttentionRecorder, fused: bool = False):
    """Like `zsharm.edit.attention.controlled_attention`, with each layer's name passed to the recorder."""
    saved = unet.attn_processors
    unet.set_attn_processor({name: _NamedProcessor(recorder, name, fused) for name in saved})
    try:
        yield recorder
    finally:
        unet.set_attn_processor(saved)


def denoise(run: Run, inversion, cond, uncond, guidance: float, recorder: AttentionRecorder = None) -> list:
    """Guided DDIM denoising from the inverted x_{N-1} back to x_0 (no editing): the reconstruction whose
    drift null-text optimisation removes. `cond`/`uncond` are 1 x 77 x D embeddings, or lists of one per
    step (as refinement and null-text optimisation give). Returns the latents after each step."""
    latents, trajectory = inversion.x_t, []
    with torch.no_grad(), (recording_attention(run.unet, recorder) if recorder is not None else nullcontext()):
        for index, t in enumerate(inversion.timesteps[1:]):
            c = cond[index] if isinstance(cond, (list, tuple)) else cond
            u = uncond[index] if isinstance(uncond, (list, tuple)) else uncond
            noise = unet_noise(run, "denoise", latents, t, torch.cat([u, c]), guidance)
            if recorder is not None:
                recorder.step()
            latents = ddim_step(run, noise, t, latents)
            trajectory.append(latents)
    return trajectory


def latent_errors(trajectory, inversion) -> np.ndarray:
    """MSE between each denoising step's latent and the inverted latent it should land on."""
    return np.array([F.mse_loss(z.float(), inversion.target_for_step(i).float()).item()
                     for i, z in enumerate(trajectory)])


@dataclass
class AttentionTrace:
    recorder: AttentionRecorder
    image: Image.Image        # the work-size input
    output: np.ndarray        # H x W x 3 uint8: what the traced denoising produced
    prompt: str
    spans: list               # [(word, [token positions])]
    tokens: list              # token labels, position 0 = start token
    timesteps: list           # the timestep of each recorded step


def trace_attention(pipe, image, prompt: str, config: HarmonizeConfig = None, cross_res=(32, 16), self_res=(32,),
                    guidance: float = None, progress: bool = False) -> AttentionTrace:
    """Invert `image` (path, PIL or Picture) under `prompt`, denoise it back with the prompt (guidance
    `config.guidance` unless given) and record every attention map of the given resolutions."""
    from zsharm.edit.diffusion import image_to_tensor
    from zsharm.edit.inversion import ddim_invert
    from zsharm.edit.tokens import word_token_spans
    from zsharm.io.pictures import load_image, work_size

    config = config or HarmonizeConfig()
    picture = image if isinstance(image, Image.Image) else load_image(image).to_pil_rgb8()
    work = picture.convert("RGB").resize(work_size(picture.size, config.size), resample=Image.LANCZOS)
    run = Run(pipe=pipe, config=config, progress=progress)
    inversion = ddim_invert(run, image_to_tensor(work), prompt, torch.Generator().manual_seed(config.seed))
    with torch.no_grad():
        cond, uncond = text_embeddings(run, "trace", [prompt]), text_embeddings(run, "trace", [""])
    recorder = AttentionRecorder((work.size[1], work.size[0]), cross_res, self_res)
    trajectory = denoise(run, inversion, cond, uncond, config.guidance if guidance is None else guidance, recorder)
    with torch.no_grad():
        output = to_uint8(decode_latents(run, "trace", trajectory[-1]))[0]
    return AttentionTrace(recorder=recorder, image=work, output=output, prompt=prompt,
                          spans=word_token_spans(pipe.tokenizer, prompt), tokens=token_labels(pipe.tokenizer, prompt),
                          timesteps=[int(t) for t in inversion.timesteps[1:]])


def token_labels(tokenizer, prompt: str) -> list:
    """Readable labels of a prompt's tokens, start and end tokens included: ['<start>', 'astronaut', ...]."""
    ids = tokenizer(prompt).input_ids
    labels = []
    for i, tok in enumerate(tokenizer.convert_ids_to_tokens(ids)):
        if i == 0:
            labels.append("<start>")
        elif i == len(ids) - 1:
            labels.append("<end>")
        else:
            labels.append(tok.replace("</w>", ""))
    return labels


def word_maps(cross_map: torch.Tensor, spans) -> dict:
    """{word: h x w map}: a word's map is the sum of its tokens' maps (CLIP splits rare words)."""
    return {word: cross_map[..., positions].sum(-1) for word, positions in spans}


