"""Stage 2.2 - text-embedding refinement (the paper's L_Emb).

At every denoising timestep the input embeddings of the condition words are optimised so that their
cross-attention maps (image/32 resolution, down and up blocks, mean over layers and heads) match the mask:
the source's words against the foreground M, the target's against the background 1-M:

    L_Emb = || M - A_fg / max A_fg ||^2 + || (1-M) - A_bg / max A_bg ||^2,  A_bg = sum_k w_k A_k

The background words carry weights w (re-normalised with a softmax after every step) and are fused into one
embedding at the end of each timestep. A regulariser 1000 * MSE(Emb, Emb_0) keeps the words near their start.
The result is one (source, target) embedding pair per timestep.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from zsharm.edit.attention import AttentionStore, controlled_attention
from zsharm.edit.diffusion import (
    Run,
    ddim_step,
    embedding_layer,
    optimizer_step,
    overridden_token_embeddings,
    progress,
    text_embeddings,
    tokenize,
    unet_noise,
)


@dataclass
class Refinement:
    embeddings: list                                  # per denoising step: 2 x 77 x D (source, fused target)
    losses: list = field(default_factory=list)        # dicts per AdamW step
    background_weights: list = field(default_factory=list)  # per denoising step
    maps_first: tuple = None                          # (source map, target map) at the first AdamW step
    maps_last: tuple = None                           # ... and at the last
    maps: list = field(default_factory=list)          # (source map, target map) at every AdamW step (notebooks)
    latents: list = field(default_factory=list)       # the guidance-0 trajectory the maps were taken on


def attention_mask_small(mask_latent: torch.Tensor, shape, threshold: float) -> torch.Tensor:
    """The latent-size mask brought to the attention maps' size: bilinear without antialiasing, binarised."""
    small = F.interpolate(mask_latent[None, None].float(), size=shape, mode="bilinear", align_corners=False,
                          antialias=False)[0, 0]
    return (small > threshold).float()


def attention_loss(map_fg: torch.Tensor, map_bg: torch.Tensor, source_positions, target_positions,
                   weights: torch.Tensor, mask: torch.Tensor) -> dict:
    """L_Emb from the cross-attention maps (h x w x 77 of the source and the target row) and the small mask:
    the source words' summed map against M, the target words' weighted sum against 1-M, each divided by its
    maximum. Returns the loss ("loss_emb"), its two parts and the two summed maps ("a_fg", "a_bg")."""
    a_fg = 0
    for p in source_positions:
        a_fg = a_fg + map_fg[:, :, p]
    a_bg = 0
    for k, p in enumerate(target_positions):
        a_bg = a_bg + map_bg[:, :, p] * weights[k]
    loss_fg = F.mse_loss(mask, a_fg / a_fg.max())
    loss_bg = F.mse_loss(1 - mask, a_bg / a_bg.max())
    return dict(a_fg=a_fg, a_bg=a_bg, attn_fg=loss_fg, attn_bg=loss_bg, loss_emb=loss_fg + loss_bg)


def refine_embeddings(run: Run, source: str, target: str, source_positions, target_positions,
                      mask_latent: torch.Tensor, inversion) -> Refinement:
    cfg = run.config
    h, w = inversion.x_t.shape[-2:]
    shape = (h * 8 // cfg.attention_res_divisor, w * 8 // cfg.attention_res_divisor)
    mask = attention_mask_small(mask_latent, shape, cfg.mask_threshold).to(run.device, run.work_dtype)
    ids = tokenize(run, [source, target])
    with torch.no_grad():
        uncond = text_embeddings(run, "refinement", ["", ""])
        start = embedding_layer(run.pipe.text_encoder)(input_ids=ids).to(run.work_dtype)
    fg = [start[0:1, p].clone().requires_grad_(True) for p in source_positions]
    bg = [start[1:2, p].clone().requires_grad_(True) for p in target_positions]
    fg0, bg0 = torch.cat(fg).detach().clone(), torch.cat(bg).detach().clone()
    weights = torch.nn.Parameter(torch.full((len(bg),), 1.0 / len(bg), device=run.device, dtype=run.work_dtype))
    optimizer = torch.optim.AdamW(fg + bg + [weights], lr=cfg.refine_lr)
    scaler = run.gradient_scaler()
    overrides = [(0, p, e) for p, e in zip(source_positions, fg)] + [(1, p, e) for p, e in zip(target_positions, bg)]

    def encode():
        run.counter.add("refinement", "text_encoder", batch=2, grad=True)
        with overridden_token_embeddings(run.pipe.text_encoder, overrides):
            return run.pipe.text_encoder(ids)[0].to(run.work_dtype)

    text = encode()
    context = torch.cat([uncond, text])
    latents = inversion.x_t.expand(2, *inversion.x_t.shape[1:])
    cond_only = cfg.refine_cond_only
    result = Refinement(embeddings=[])
    for index, t in enumerate(progress(run, inversion.timesteps[1:], "Refine embeddings")):
        for it in range(cfg.refine_iters):
            parts = {}

            def refinement_loss(again):
                # a repeat needs the text encoder's graph too: the first backward freed it
                ctx = torch.cat([uncond, encode()]) if again else context
                store = AttentionStore(num_pixels=(shape[0] * shape[1],), places=("down", "up"), keep_grad=True,
                                       cond_rows_only_batch=cond_only)
                with controlled_attention(run.unet, store, fused=run.fused):
                    # guidance 0: the prediction itself is not used here, only the maps the call leaves behind
                    unet_noise(run, "refinement", latents, t, ctx, 0.0, rows="cond" if cond_only else "both")
                map_fg = store.aggregate(shape, row=0).to(run.work_dtype)
                map_bg = store.aggregate(shape, row=1).to(run.work_dtype)
                parts.update(attention_loss(map_fg, map_bg, source_positions, target_positions, weights, mask))
                reg_fg = F.mse_loss(torch.cat(fg), fg0)
                reg_bg = F.mse_loss(torch.cat(bg), bg0)
                loss_reg = (reg_fg + reg_bg) * cfg.refine_reg_weight
                parts.update(reg_fg_mse=reg_fg, reg_bg_mse=reg_bg, loss_reg=loss_reg)
                return parts["loss_emb"] + loss_reg

            retries = optimizer_step(scaler, optimizer, refinement_loss, run.counter)
            a_fg, a_bg = parts.pop("a_fg"), parts.pop("a_bg")
            record = dict(step=index, iter=it, **{k: v.item() for k, v in parts.items()})
            record["total"] = record["loss_emb"] + record["loss_reg"]
            if retries:
                record["scale_retries"] = retries
            result.losses.append(record)
            maps = (a_fg.detach().cpu(), a_bg.detach().cpu())
            if result.maps_first is None:
                result.maps_first = maps
            result.maps_last = maps
            result.maps.append(maps)
            text = encode()
            context = torch.cat([uncond, text])
            with torch.no_grad():
                weights.data = torch.softmax(weights, dim=0).data
        fused = text[1, target_positions].detach().clone() * weights.detach().unsqueeze(1)
        embedding = text.detach().clone()
        embedding[1, target_positions] = fused.sum(0).unsqueeze(0)
        result.embeddings.append(embedding)
        result.background_weights.append(weights.detach().cpu().clone())
        with torch.no_grad():
            if cfg.refine_cond_only:
                # the guidance-0 trajectory from x_T retraces the inversion: take its latents, save the calls
                latents = inversion.target_for_step(index).expand(2, *latents.shape[1:])
            else:
                with run.arithmetic("refinement"):
                    noise = unet_noise(run, "refinement", latents, t, context, 0.0)
                latents = ddim_step(run, noise, t, latents)
        result.latents.append(latents)
    return result
