"""Looking inside the method: an attention recorder, a few measurements, and the plots the notebooks draw.

    trace = trace_attention(pipe, image, "astronaut bright warm indoor", config)
    trace.recorder.map(step=3, layer="up1.0")           # h x w x 77, head-averaged, conditional row
    plot_word_maps(trace.image, trace.recorder.mean(), trace.spans)

The recorder keeps every attention map of the small resolutions per (denoising step, layer, cross or self),
so a notebook can step through words, layers and timesteps. Everything here reads what the stage modules
compute; nothing here changes the method.
"""

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zsharm.attention import AttentionControl, ControlledAttnProcessor, place_of
from zsharm.config import HarmonizeConfig
from zsharm.diffusion import Run, ddim_step, decode_latents, text_embeddings, to_uint8, unet_noise
from zsharm.errors import ZsharmError
from zsharm.models import TINY_SPECS, tiny_pipeline_dir


# ----------------------------------------------------------------------------- where things are

def repo_root(start=None) -> Path:
    """The checkout's root: the first folder at or above `start` (default: the working folder) holding
    pyproject.toml. Notebooks find `data/` through it, wherever they are run from."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "zsharm").is_dir():
            return folder
    raise ZsharmError(f"no zsharm checkout (a folder with pyproject.toml) at or above {here}")


def is_tiny(model: str) -> bool:
    """Whether a model spec names one of the tiny random-weight test models."""
    return str(model) in TINY_SPECS


TINY_NOTE = ("The tiny model is random: shapes and code paths, not pictures, are what to look at here. "
             "Set ZSHARM_MODEL to stabilityai/stable-diffusion-2-base (a GPU helps) to see the real thing.")


def load_tokenizer(model: str):
    """The CLIP tokenizer of a model spec (hub id, diffusers folder or tiny) without loading its weights."""
    from transformers import CLIPTokenizer
    source = str(tiny_pipeline_dir(model)) if model in TINY_SPECS else str(model)
    try:
        return CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
    except OSError as exc:
        raise ZsharmError(f"no tokenizer for model {model!r}: {str(exc).splitlines()[0] if str(exc) else exc}") from exc


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
    """Like `zsharm.attention.controlled_attention`, with each layer's name passed to the recorder."""
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
    from zsharm.inversion import ddim_invert, image_to_tensor
    from zsharm.io import load_image, work_size
    from zsharm.prompts import word_token_spans

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


# ----------------------------------------------------------------------------- measurements

def as_array(image) -> np.ndarray:
    """PIL, uint8 array, Picture or tensor (1x3xHxW / 3xHxW in [0,1], 1x1xHxW) -> float H x W x 3 (or H x W)
    in [0, 1]."""
    if hasattr(image, "to_pil_rgb8"):
        image = image.to_pil_rgb8()
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if torch.is_tensor(image):
        t = image.detach().float().cpu()
        while t.dim() > 3:
            t = t[0]
        image = t[0].numpy() if t.shape[0] == 1 else t.permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == bool:
        return array.astype(np.float32)
    return array.astype(np.float32)


def colour_shift(before, after, mask) -> float:
    """How far colour moved inside the mask: the mean CIELAB distance (Delta E 1976) between two images."""
    from skimage.color import rgb2lab
    a, b = rgb2lab(as_array(before)), rgb2lab(as_array(after))
    mask = np.asarray(mask, dtype=bool)
    return float(np.linalg.norm(a - b, axis=-1)[mask].mean())


def structure_change(before, after, mask, pidinet=None) -> dict:
    """How far the structure moved inside the mask: MSE between the Sobel maps of two images (and between
    their PiDiNet maps when a detector is given), the terms of L_Edge."""
    from zsharm.edges import pidinet_edges, sobel

    def tensor(image):
        return torch.from_numpy(as_array(image)).permute(2, 0, 1)[None]

    a, b = tensor(before), tensor(after)
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    out = {"sobel_mse": F.mse_loss(sobel(a) * m, sobel(b) * m).item()}
    if pidinet is not None:
        weight = next(pidinet.parameters())  # run where the detector lives (a GPU, maybe in half precision)
        with torch.no_grad():
            ea, eb = (pidinet_edges(pidinet, x.to(weight.device, weight.dtype)).float().cpu() for x in (a, b))
        out["pidinet_mse"] = F.mse_loss(ea * m, eb * m).item()
    return out


def latent_preview(latent) -> np.ndarray:
    """A 4-channel latent (1x4xhxw or 4xhxw) as an RGB picture of its first three channels, each stretched
    to [0, 1]: where the image's structure sits in latent space."""
    z = latent.detach().float().cpu()
    z = z[0] if z.dim() == 4 else z
    rgb = z[:3]
    lo = rgb.amin(dim=(1, 2), keepdim=True)
    hi = rgb.amax(dim=(1, 2), keepdim=True)
    return ((rgb - lo) / (hi - lo + 1e-8)).permute(1, 2, 0).numpy()


def upsample(heat, size_hw) -> np.ndarray:
    """An h x w map bilinearly resized to `size_hw` (as the paper's figures show 16x16 maps over images)."""
    t = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(size_hw), mode="bilinear", align_corners=False)[0, 0].numpy()


# ----------------------------------------------------------------------------- plots

def _plt():
    import matplotlib.pyplot as plt
    return plt


def show_images(images, titles=None, ncols: int = None, size: float = 3.6, suptitle: str = None, cmap=None):
    """A grid of images (PIL, arrays, tensors) with titles; returns the figure."""
    plt = _plt()
    images = list(images)
    ncols = ncols or len(images)
    nrows = -(-len(images) // ncols)
    first = as_array(images[0])
    aspect = first.shape[0] / first.shape[1]
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * aspect * nrows + 0.5 * (1 + nrows)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(images):
            array = as_array(images[k])
            ax.imshow(array, cmap=cmap or ("gray" if array.ndim == 2 else None), vmin=0 if array.ndim == 2 else None)
            if titles is not None:
                ax.set_title(titles[k], fontsize=11)
    if suptitle:
        fig.suptitle(suptitle, fontsize=13)
    fig.tight_layout()
    return fig


def draw_mask_outline(ax, mask, color="white", linewidth=1.2):
    """The mask's boundary as a contour on `ax` (in the axes' pixel coordinates)."""
    mask = np.asarray(mask, dtype=np.float32)
    ax.contour(mask, levels=[0.5], colors=[color], linewidths=linewidth)


def overlay_map(ax, image, heat, title=None, alpha: float = 0.55, cmap: str = "jet", mask=None, normalize=True):
    """A small map (h x w) upsampled over an image, optionally with the mask's outline. `normalize` stretches
    the map from its minimum (blue) to its maximum (red), so its shape shows whatever its range."""
    base = as_array(image)
    heat = np.asarray(heat.detach().cpu() if torch.is_tensor(heat) else heat, dtype=np.float32)
    big = upsample(heat, base.shape[:2])
    if normalize:
        big = (big - big.min()) / (big.max() - big.min() + 1e-8)
    ax.imshow(base)
    ax.imshow(big, cmap=cmap, alpha=alpha, vmin=0, vmax=1 if normalize else None)
    if mask is not None:
        draw_mask_outline(ax, mask)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=11)
    return ax


def plot_word_maps(image, cross_map, spans, mask=None, title=None, size: float = 2.7, include_start=False):
    """One panel per word of a prompt: the word's cross-attention map over the image, each stretched from its
    own minimum to its maximum (blue to red)."""
    plt = _plt()
    maps = word_maps(cross_map, spans)
    if include_start:
        maps = {"<start>": cross_map[..., 0], **maps}
    base = as_array(image)
    aspect = base.shape[0] / base.shape[1]
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(size * (len(maps) + 1), size * aspect + 0.7), squeeze=False)
    axes[0, 0].imshow(base)
    if mask is not None:
        draw_mask_outline(axes[0, 0], mask)
    axes[0, 0].set_title("image (mask outlined)" if mask is not None else "image", fontsize=11)
    axes[0, 0].axis("off")
    for ax, (word, heat) in zip(axes[0, 1:], maps.items()):
        overlay_map(ax, base, heat, title=f'"{word}"', mask=mask)
    if title:
        fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def plot_losses(records, keys, ax=None, title=None, log: bool = False, xlabel="optimiser step"):
    """Loss curves from a list of per-step dicts (refinement or null-text `losses`); vertical lines mark
    where a new denoising timestep begins."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(records))
    for key in keys:
        values = [r.get(key, np.nan) for r in records]
        ax.plot(x, values, marker="o", markersize=3, label=key)
    starts = [i for i, r in enumerate(records) if i > 0 and r.get("step") != records[i - 1].get("step")]
    for i in starts:
        ax.axvline(i - 0.5, color="grey", alpha=0.25, linewidth=0.8)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel + (" (grey lines: next timestep)" if starts else ""))
    ax.set_ylabel("loss")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return ax


def plot_edges(image, edges: dict, mask=None, size: float = 3.6, title=None):
    """An image beside its edge maps ({name: map}), each shown as a grey picture (white = edge)."""
    plt = _plt()
    base = as_array(image)
    aspect = base.shape[0] / base.shape[1]
    fig, axes = plt.subplots(1, len(edges) + 1, figsize=(size * (len(edges) + 1), size * aspect + 0.7))
    axes[0].imshow(base)
    axes[0].set_title("image", fontsize=11)
    for ax, (name, edge) in zip(axes[1:], edges.items()):
        e = as_array(edge)
        if e.ndim == 3:
            e = e.mean(-1)  # Sobel is per channel: show the mean magnitude
        ax.imshow(e / (e.max() + 1e-8), cmap="gray")
        ax.set_title(name, fontsize=11)
    for ax in axes:
        if mask is not None:
            draw_mask_outline(ax, mask, color="red", linewidth=0.8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def difference(a, b, gain: float = 4.0) -> np.ndarray:
    """|a - b| per pixel (mean over channels), amplified by `gain` and clipped: where two images differ."""
    return np.clip(np.abs(as_array(a) - as_array(b)).mean(-1) * gain, 0, 1)
