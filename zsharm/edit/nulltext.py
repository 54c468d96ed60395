"""Stage 2.3 - content structure preservation: null-text optimisation with an edge loss.

After refinement (never before: the paper finds no benefit the other way round), the unconditional embedding
is optimised at every timestep so that the guided denoising step lands on the inverted latent, while the
decoded prediction I' keeps the edges of the input I inside the mask:

    L = 10 * MSE(z_{t-1}, z*_{t-1}) + sum of the terms (the paper: L_Edge alone),
    L_Edge = || E_S(I) - E_S(I') ||^2 + gamma * || E_D(I) - E_D(I') ||^2   (inside the mask)

E_S is a Sobel filter, E_D the PiDiNet edge detector, gamma = 0.1. AdamW, lr 0.1, i//10 + 1 inner steps at
timestep index i.

Three details of the authors' code change the numbers; the `paper` schedule keeps them, each a field of the
configuration (docs/method.md, section 2.3):
- the Sobel map of the input is taken on its [-1, 1] pixels, the prediction's on [0, 1] ones (sobel_input_signed);
- PiDiNet runs under no_grad, so its term adds to the loss value but not to the gradient (pidinet_grad False);
- the first inner step at timestep i still uses timestep i-1's text embedding, updated after the step
  (nulltext_stale_embedding).
"""

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from zsharm.edit.diffusion import (
    Run,
    ddim_step,
    decode_latents,
    image_to_tensor,
    optimizer_step,
    progress,
    text_embeddings,
    to_uint8,
    unet_noise,
)


@dataclass
class NullText:
    uncond: list                                   # per denoising step: 1 x 77 x D
    latents: list                                  # the reconstruction trajectory
    reconstruction: np.ndarray = None              # H x W x 3 uint8
    losses: list = field(default_factory=list)
    edges_input: dict = None                       # {"sobel": ..., "pidinet": ...} of the input, for notebooks
    edges_last: dict = None                        # ... of the last prediction


def mask_box(mask: torch.Tensor, margin: int):
    """(y0, y1, x0, x1) in latent pixels: the box around a full-size mask, grown by `margin` latent pixels."""
    rows = torch.nonzero(mask.any(1)).flatten() // 8
    cols = torch.nonzero(mask.any(0)).flatten() // 8
    h, w = mask.shape[0] // 8, mask.shape[1] // 8
    return (max(int(rows.min()) - margin, 0), min(int(rows.max()) + 1 + margin, h),
            max(int(cols.min()) - margin, 0), min(int(cols.max()) + 1 + margin, w))


class EdgeLoss:
    """L_Edge against a fixed input image, inside the mask: the "edges" term (zsharm.edit.terms)."""

    def __init__(self, run: Run, image_pil, mask, pidinet):
        """`mask`: the boolean foreground mask at work size (H x W, as `at_work_size` gives it)."""
        from zsharm.edit.edges import pidinet_edges, sobel
        mask_full = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
        self.run, self.mask, self.pidinet = run, mask_full.to(run.device), pidinet
        self.sobel, self.pidinet_edges = sobel, pidinet_edges
        image01 = (image_to_tensor(image_pil).to(run.device, run.work_dtype) + 1) / 2
        self.crop, self.area = None, 1.0
        if run.config.edge_crop:
            # fast: decode and compare only the mask's box (plus a margin), the loss scaled to the whole image's
            # mean so its weight keeps its meaning; border effects stay in the margin, outside the mask
            self.crop = mask_box(mask_full[0, 0], run.config.edge_crop_margin)
            y0, y1, x0, x1 = (8 * v for v in self.crop)
            self.area = (y1 - y0) * (x1 - x0) / (mask_full.shape[-1] * mask_full.shape[-2])
            image01, self.mask = image01[..., y0:y1, x0:x1], self.mask[..., y0:y1, x0:x1]
        # the authors feed PiDiNet a bilinear resize and Sobel a Lanczos one; at work size both are the image
        sobel_input = image01 * 2 - 1 if run.config.sobel_input_signed else image01
        with torch.no_grad():
            self.ref_sobel = sobel(sobel_input)
            self.ref_pidinet = None
            if pidinet is not None:
                self.ref_pidinet = self._pidinet(image01)
                run.counter.add("nulltext", "pidinet")

    def _pidinet(self, image01):
        dtype = next(self.pidinet.parameters()).dtype
        return self.pidinet_edges(self.pidinet, image01.to(dtype)).to(image01.dtype)

    def __call__(self, image01):
        cfg = self.run.config
        m = self.mask
        out_sobel = self.sobel(image01)
        sobel_mse = F.mse_loss(out_sobel * m, self.ref_sobel * m) * self.area
        loss = cfg.edge_sobel_weight * sobel_mse
        terms = dict(sobel_mse=sobel_mse.item())
        if self.pidinet is not None:
            self.run.counter.add("nulltext", "pidinet", grad=cfg.pidinet_grad)
            with torch.set_grad_enabled(cfg.pidinet_grad and torch.is_grad_enabled()):
                out_edge = self._pidinet(image01)
            pidinet_mse = F.mse_loss(out_edge * m, self.ref_pidinet * m) * self.area
            loss = cfg.edge_pidinet_weight * pidinet_mse + loss
            terms["pidinet_edge_mse"] = pidinet_mse.item()
            self.last = dict(sobel=out_sobel.detach().cpu(), pidinet=out_edge.detach().cpu())
        else:
            self.last = dict(sobel=out_sobel.detach().cpu())
        return loss, terms


def edge_term(run: Run, image_pil, mask, pidinet) -> EdgeLoss:
    """The "edges" term's factory: `pidinet()` gives the detector (None leaves PiDiNet's part out)."""
    return EdgeLoss(run, image_pil, mask, pidinet())


def optimize_null_text(run: Run, inversion, embeddings, terms=(), *, edge_loss: EdgeLoss = None) -> NullText:
    """Per-timestep unconditional embeddings that reconstruct the inverted trajectory under the source text.

    `terms`: loss terms added to the latent MSE, in order (zsharm.edit.terms); a single term is taken as a list.
    `edge_loss`: the notebooks' name for a lone edge term."""
    cfg = run.config
    terms = [terms] if callable(terms) else list(terms or ())
    if edge_loss is not None:
        terms.insert(0, edge_loss)
    with torch.no_grad():
        uncond = text_embeddings(run, "nulltext", [""])
    uncond = uncond.detach().clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([uncond], lr=cfg.nulltext_lr)
    scaler = run.gradient_scaler()
    context = torch.cat([uncond, embeddings[0][:1]])
    latents = inversion.x_t
    result = NullText(uncond=[], latents=[])
    for index, t in enumerate(progress(run, inversion.timesteps[1:], "Null-text + edges")):
        target = inversion.target_for_step(index)
        if not cfg.nulltext_stale_embedding:
            context = torch.cat([uncond, embeddings[index][:1]])
        for inner in range(cfg.nulltext_inner_steps(index)):
            record = dict(step=index, iter=inner)

            def reconstruction_loss(again):  # nothing to rebuild beyond the UNet call
                with run.arithmetic("nulltext"):
                    noise = unet_noise(run, "nulltext", latents, t, context, cfg.guidance)
                out = ddim_step(run, noise, t, latents)
                latent_mse = F.mse_loss(out, target)
                loss = cfg.nulltext_latent_weight * latent_mse
                record["null_text_mse"] = latent_mse.item()
                decoded = {}  # terms reading the same box share one VAE decode
                for term in terms:
                    box = getattr(term, "crop", None)
                    if box not in decoded:
                        part = out if box is None else out[..., box[0]:box[1], box[2]:box[3]]
                        decoded[box] = decode_latents(run, "nulltext", part)
                    value, parts = term(decoded[box])
                    loss = loss + value
                    record.update(parts)
                record["total"] = loss.item()
                return loss

            retries = optimizer_step(scaler, optimizer, reconstruction_loss, run.counter)
            if retries:
                record["scale_retries"] = retries
            result.losses.append(record)
            context = torch.cat([uncond, embeddings[index][:1]])
            if record["null_text_mse"] < cfg.nulltext_early_stop:
                break
        with torch.no_grad(), run.arithmetic("nulltext"):
            latents = ddim_step(run, unet_noise(run, "nulltext", latents, t, context, cfg.guidance), t, latents)
        result.uncond.append(uncond.detach().clone())
        result.latents.append(latents)
    with torch.no_grad():
        result.reconstruction = to_uint8(decode_latents(run, "nulltext", latents))[0]
    edges = next((term for term in terms if isinstance(term, EdgeLoss)), None)
    if edges is not None:
        result.edges_input = dict(sobel=edges.ref_sobel.cpu(),
                                  pidinet=None if edges.ref_pidinet is None else edges.ref_pidinet.cpu())
        result.edges_last = getattr(edges, "last", None)
    return result
