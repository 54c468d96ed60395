"""What SD 2 base's gradient steps keep for their backward pass at 512x512, counted on the meta device.

    python benchmarks/activation_memory.py

No GPU and no weights are needed: the real architectures (zsharm/assets/sd2_base_config) are built on the meta
device, each gradient step of the pipeline runs once, and every tensor autograd saves for the backward pass is
added up (weights excluded). Weights plus the largest step's saved tensors estimate an iteration's peak memory;
it is an estimate, not a measurement (`zsharm bench --device cuda` measures): it leaves out the backward pass's
transient buffers and the allocator's slack, and on the meta device fused attention runs PyTorch's math
fallback, which keeps every attention map that flash or memory-efficient attention would not, so the fused rows
are upper bounds.
"""

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from zsharm.edit.attention import AttentionStore, controlled_attention
from zsharm.repro.speed import sd2_configs

GiB = 2 ** 30


def build(dtype):
    cfg = sd2_configs()
    text_cfg = CLIPTextConfig(**{k: v for k, v in cfg["text_encoder"].items() if k != "architectures"})
    with torch.device("meta"):
        models = dict(unet=UNet2DConditionModel.from_config(cfg["unet"]), vae=AutoencoderKL.from_config(cfg["vae"]),
                      text_encoder=CLIPTextModel(text_cfg))
    return {k: m.to(dtype).requires_grad_(False) for k, m in models.items()}


QUERIES = {64 * 64, 32 * 32, 16 * 16, 8 * 8}
KEYS = QUERIES | {77}
KEPT_MAP = (16 * 16, 77)  # refinement's image/32 cross-attention maps, materialised by the pipeline itself


def saved_gib(models, step, flash: bool = False) -> float:
    weights = {id(p) for m in models.values() for p in m.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        base = t._base if t._base is not None else t
        if id(t) in weights or id(base) in weights:
            return t
        if flash and t.dim() == 4 and t.shape[-2] in QUERIES and t.shape[-1] in KEYS and tuple(t.shape[-2:]) != KEPT_MAP:
            b, h, n = t.shape[:3]
            total += b * h * n * (64 * t.element_size() + 4)
        else:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return total / GiB


def unet_step(models, dtype, batch, fused, keep_maps):
    unet = models["unet"]
    latents = torch.zeros(batch, 4, 64, 64, device="meta", dtype=dtype)
    context = torch.zeros(batch, 77, 1024, device="meta", dtype=dtype, requires_grad=True)
    store = AttentionStore(num_pixels=(256,), keep_grad=True) if keep_maps else AttentionStore(num_pixels=())
    with controlled_attention(unet, store, fused=fused):
        unet(latents, 500, encoder_hidden_states=context)


def decode_step(models, dtype, side):
    latents = torch.zeros(1, 4, side, side, device="meta", dtype=dtype, requires_grad=True)
    models["vae"].decode(latents)


def main():
    rows = []
    for label, dtype, fused in (("fp16, fused attention", torch.float16, True),
                                ("fp32, every map materialised (the authors')", torch.float32, False)):
        models = build(dtype)
        weights = sum(p.numel() * p.element_size() for m in models.values() for p in m.parameters()) / GiB
        refine4 = saved_gib(models, lambda: unet_step(models, dtype, 4, fused, True), flash=fused)
        refine2 = saved_gib(models, lambda: unet_step(models, dtype, 2, fused, True), flash=fused)
        null2 = saved_gib(models, lambda: unet_step(models, dtype, 2, fused, False), flash=fused)
        full = saved_gib(models, lambda: decode_step(models, dtype, 64), flash=fused)
        crop = saved_gib(models, lambda: decode_step(models, dtype, 40), flash=fused)
        rows.append((label, weights, refine4, refine2, null2, full, crop))
    print("| arithmetic | weights | refinement, batch 4 (paper) | refinement, batch 2 (fast) | null-text UNet, "
          "batch 2 | VAE decode 64x64 latent (paper) | VAE decode 40x40 crop (fast) | paper: weights + largest "
          "step | fast: weights + largest step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, weights, refine4, refine2, null2, full, crop in rows:
        paper = weights + max(refine4, null2 + full)
        fast = weights + max(refine2, null2 + crop)
        print(f"| {label} | {weights:.2f} | {refine4:.2f} | {refine2:.2f} | {null2:.2f} | {full:.2f} | {crop:.2f} | "
              f"{paper:.1f} | {fast:.1f} |")
    print("\nGiB; saved-for-backward tensors counted on the meta device (see the docstring for what is left out).")


if __name__ == "__main__":
    main()
