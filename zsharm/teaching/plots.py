"""A few measurements (colour shift, structure change) and the plots the notebooks draw."""



import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zsharm.teaching.trace import word_maps

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
    from zsharm.edit.edges import pidinet_edges, sobel

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


NORMALISATION = "map / its max"  # the colour-bar label of every normalised map


def overlay_map(ax, image, heat, title=None, alpha: float = 0.55, cmap: str = "magma", mask=None, normalize=True,
                vmax: float = None, fontsize: int = 11):
    """A small map (h x w) upsampled over an image, optionally with the mask's outline. `normalize` divides the
    map by its maximum (the course's one normalisation, `NORMALISATION`): zero stays dark, so a near-uniform map
    looks near-uniform instead of being stretched into a blob; without it the map is drawn on a fixed scale
    [0, vmax], so several maps compare. Returns the map's image, for a colour bar."""
    base = as_array(image)
    heat = np.asarray(heat.detach().float().cpu() if torch.is_tensor(heat) else heat, dtype=np.float32)
    big = upsample(heat, base.shape[:2])
    if normalize:
        big = big / (big.max() + 1e-12)
    ax.imshow(base)
    shown = ax.imshow(big, cmap=cmap, alpha=alpha, vmin=0, vmax=1 if normalize else vmax)
    if mask is not None:
        draw_mask_outline(ax, mask, color="cyan")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=fontsize)
    return shown


def plot_word_maps(image, cross_map, spans, mask=None, title=None, size: float = 2.7, include_start=False):
    """One panel per word of a prompt: the word's cross-attention map over the image, each divided by its own
    maximum (one colour bar: that shared 0-1 scale), the maximum in the panel's title so words compare."""
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
        top = float(heat.max())
        shown = overlay_map(ax, base, heat, title=f'"{word}"\nmax {top:.3g}', mask=mask)
    if title:
        fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    fig.colorbar(shown, ax=list(axes[0, 1:]), fraction=0.02, pad=0.01, label=NORMALISATION)
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
