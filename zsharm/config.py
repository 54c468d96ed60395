"""Every hyperparameter of stage 2 in one place, defaulting to the paper (METHOD.md).

Two named schedules:
- `paper`: the authors' pipeline, step for step and loss for loss (their Diff-Harmonization code as published).
- `fast`: zsharm's default; the same method with fewer, better spent model calls (`zsharm ablate` shows each).

How the numbers are computed is a separate setting, `arithmetic`: the authors' (fp32, every attention map
materialised; on CPU `paper` uses it and reproduces their numbers) or zsharm's (fp16 on a GPU, fused attention).
"""

from dataclasses import asdict, dataclass, replace


@dataclass
class HarmonizeConfig:
    schedule: str = "paper"

    # diffusion
    model: str = "stabilityai/stable-diffusion-2-base"
    steps: int = 50                    # DDIM steps
    guidance: float = 2.5              # classifier-free guidance of null-text and editing
    inversion_guidance: float = 0.0    # DDIM inversion runs unconditionally
    seed: int = 8888                   # seeds the VAE posterior sample
    size: int = 512                    # long side of the work resolution (multiple of 64)
    mask_threshold: float = 100 / 255  # mask binarisation

    # stage 2.2: text-embedding refinement
    refine: bool = True
    refine_lr: float = 5e-4
    refine_iters: int = 2              # AdamW steps per timestep
    refine_reg_weight: float = 1000.0  # weight of MSE(Emb, Emb_0)
    attention_res_divisor: int = 32    # L_Emb uses the image/32 cross-attention maps

    # stage 2.3: null-text optimisation with the edge loss
    nulltext_lr: float = 0.1
    nulltext_latent_weight: float = 10.0
    nulltext_max_inner: int = 5        # inner steps i//10 + 1, capped (the cap is reached only beyond 50 steps)
    nulltext_early_stop: float = 0.0   # stop inner steps once the latent MSE is below this (0 = never)
    use_edges: bool = True
    edge_pidinet_weight: float = 0.1   # gamma
    edge_sobel_weight: float = 1.0
    pidinet_variant: str = "tiny"
    pidinet_grad: bool = False         # the authors run PiDiNet under no_grad: its term adds to the loss value only
    edge_crop: bool = False            # fast: decode and compare edges in the mask's box only
    edge_crop_margin: int = 4          # latent pixels around the box

    # stage 2.4: Prompt-to-Prompt editing
    cross_replace_steps: float = 1.0   # fraction of steps whose cross-attention maps are replaced
    self_replace_steps: float = 1.0    # fraction of steps whose self-attention maps are replaced (all resolutions)

    # arithmetic: how the numbers are computed, never which (steps, inner iterations and losses stay the schedule's)
    arithmetic: str = "auto"           # "authors": fp32 with every attention map materialised in their order of
                                       # operations, reproducing their numbers; "fast": `dtype` and fused attention;
                                       # "auto": authors for `paper` on CPU, fast everywhere else
    dtype: str = "auto"                # "auto": fp32 under the authors' arithmetic, else fp16 on a GPU, fp32 on CPU
    fused_attention: bool = True       # fast arithmetic: SDPA wherever no attention map is needed
    inversion_batch_uncond_only: bool = False  # fast: guidance 0 needs only the unconditional half
    refine_cond_only: bool = False     # fast: the guidance-0 refinement step needs only the conditional rows' maps

    # resolution
    transfer: str = "guided"           # "guided" (edge-aware colour transfer) or "resize"

    def __post_init__(self):
        if self.size % 64 or self.size < 64:
            raise ValueError(f"size must be a positive multiple of 64, got {self.size}")
        if self.steps < 2:
            raise ValueError(f"steps must be at least 2, got {self.steps}")
        if self.arithmetic not in ("auto", "authors", "fast"):
            raise ValueError(f"arithmetic must be auto, authors or fast, got {self.arithmetic!r}")
        if self.dtype not in ("auto", "fp16", "bf16", "fp32", "fp64"):
            raise ValueError(f"dtype must be auto, fp16, bf16, fp32 or fp64, got {self.dtype!r}")

    @classmethod
    def paper(cls, **overrides) -> "HarmonizeConfig":
        return cls(schedule="paper", **overrides)

    @classmethod
    def fast(cls, **overrides) -> "HarmonizeConfig":
        base = dict(schedule="fast", steps=20, refine_iters=1, nulltext_max_inner=1, nulltext_early_stop=1e-6,
                    fused_attention=True, inversion_batch_uncond_only=True, refine_cond_only=True,
                    pidinet_grad=True, edge_crop=True)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def named(cls, schedule: str, **overrides) -> "HarmonizeConfig":
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
        return SCHEDULES[schedule](**overrides)

    def replace(self, **changes) -> "HarmonizeConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def authors_arithmetic(self, device) -> bool:
        """Whether UNet calls on `device` run the authors' arithmetic (see `arithmetic`).

        `paper` on CPU does, so that it reproduces their numbers (tests/test_reference.py); on a GPU it keeps the
        paper's every step, inner iteration and loss but computes them in half precision with fused attention,
        which is what makes it several times faster than their fp32 code."""
        import torch
        if self.arithmetic == "auto":
            if device is None:
                from zsharm.models import default_device
                device = default_device()
            return self.schedule == "paper" and torch.device(device).type == "cpu"
        return self.arithmetic == "authors"

    def torch_dtype(self, device):
        """The model precision this configuration asks for on `device` (None: the loader's default, which is
        fp16 on a GPU and fp32 on CPU)."""
        import torch
        names = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
        if self.dtype in names:
            return names[self.dtype]
        return torch.float32 if self.authors_arithmetic(device) else None

    def nulltext_inner_steps(self, index: int) -> int:
        return min(index // 10 + 1, self.nulltext_max_inner)


SCHEDULES = {"paper": HarmonizeConfig.paper, "fast": HarmonizeConfig.fast}
