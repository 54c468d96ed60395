"""Every hyperparameter of stage 2 in one place (docs/method.md, sections 2 and 4-6).

Two named schedules:
- `fast` (DEFAULT_SCHEDULE: what `HarmonizeConfig()`, the CLI, `Harmonizer`, `run_iteration` and every other entry
  point use unless told otherwise): the paper's method with fewer, better spent model calls (`zsharm ablate` shows
  what each shortcut saves and costs);
- `paper`: the authors' pipeline, step for step and loss for loss (their Diff-Harmonization code as published),
  their numeric quirks included as named fields below.

The field defaults are the fast schedule's; `HarmonizeConfig.paper()` sets the paper's values. Nothing reads the
schedule's name to decide how to compute: it is a label. `to_dict` is what every result records (history.json,
summary.json, `evaluate` and `bench` outputs) and `from_dict` (or `zsharm harmonize --config FILE`) reruns it.

How the numbers are computed is a separate setting, `arithmetic`: the authors' (fp32, every attention map
materialised; on CPU `paper` uses it and reproduces their numbers) or zsharm's (fp16 on a GPU, fused attention).
"""

from dataclasses import asdict, dataclass, fields, replace

# the stage-2.3 loss terms by name: "module:factory", the factory called as factory(run, image, mask, pidinet)
# (zsharm.edit.terms); a new term is one module and one line here
NULLTEXT_TERMS = {
    "edges": "zsharm.edit.nulltext:edge_term",
}


@dataclass
class HarmonizeConfig:
    schedule: str = "fast"             # a label: which named schedule these values came from

    # diffusion
    steps: int = 20                    # DDIM steps (paper: 50)
    guidance: float = 2.5              # classifier-free guidance of null-text and editing
    inversion_guidance: float = 0.0    # DDIM inversion runs unconditionally
    seed: int = 8888                   # seeds the VAE posterior sample
    size: int = 512                    # long side of the work resolution (multiple of 64)
    mask_threshold: float = 100 / 255  # mask binarisation

    # stage 2.2: text-embedding refinement
    refine: bool = True
    refine_lr: float = 5e-4
    refine_iters: int = 1              # AdamW steps per timestep (paper: 2)
    refine_reg_weight: float = 1000.0  # weight of MSE(Emb, Emb_0)
    attention_res_divisor: int = 32    # L_Emb uses the image/32 cross-attention maps

    # stage 2.3: null-text optimisation with the edge loss
    nulltext_lr: float = 0.1
    nulltext_latent_weight: float = 10.0
    nulltext_max_inner: int = 1        # inner steps i//10 + 1, capped (paper: 5, reached only beyond 50 steps)
    nulltext_early_stop: float = 1e-6  # stop inner steps once the latent MSE is below this (paper: 0 = never)
    use_edges: bool = True             # the paper's ablation switch: False leaves the "edges" term out
    nulltext_terms: tuple = ("edges",)  # the loss terms added to the latent MSE, in order: names in NULLTEXT_TERMS
                                        # or "package.module:factory" (zsharm.edit.terms)
    edge_pidinet_weight: float = 0.1   # gamma
    edge_sobel_weight: float = 1.0
    pidinet_variant: str = "tiny"
    pidinet_grad: bool = True          # paper: False, the authors run PiDiNet under no_grad (loss value only)
    edge_crop: bool = True             # decode and compare edges in the mask's box only (paper: whole image)
    edge_crop_margin: int = 4          # latent pixels around the box
    # the authors' quirks (paper: True); docs/method.md section 2.3
    sobel_input_signed: bool = False   # the input's Sobel map taken on [-1, 1] pixels, the prediction's on [0, 1]
    nulltext_stale_embedding: bool = False  # timestep i's first inner step uses timestep i-1's text embedding

    # stage 2.4: Prompt-to-Prompt editing
    cross_replace_steps: float = 1.0   # fraction of steps whose cross-attention maps are replaced
    self_replace_steps: float = 1.0    # fraction of steps whose self-attention maps are replaced (all resolutions)

    # arithmetic: how the numbers are computed, never which (steps, inner iterations and losses stay the schedule's)
    arithmetic: str = "auto"           # "authors": fp32 with every attention map materialised in their order of
                                       # operations, reproducing their numbers; "fast": `dtype` and fused attention;
                                       # "auto": authors on CPU where `authors_arithmetic_on_cpu`, else fast
    authors_arithmetic_on_cpu: bool = False  # paper: True, so that `paper` on CPU reproduces the authors' numbers
    dtype: str = "auto"                # "auto": fp32 under the authors' arithmetic, else fp16 on a GPU, fp32 on CPU
    fused_attention: bool = True       # fast arithmetic: SDPA wherever no attention map is needed
    inversion_batch_uncond_only: bool = True  # guidance 0 needs only the unconditional half (paper: both halves)
    refine_cond_only: bool = True      # the guidance-0 refinement step needs only the conditional rows' maps

    # resolution
    transfer: str = "guided"           # "guided" (edge-aware colour transfer) or "resize"

    # stage 3
    evaluator_scoring: str = "memory"  # "memory": the blend as it is; "saved_jpeg" (paper): each blend saved as a
                                       # quality-75 JPEG and re-read, scored with the mask file's soft values, and
                                       # the loop goes on from the re-read JPEG as the authors' does

    def __post_init__(self):
        if self.size % 64 or self.size < 64:
            raise ValueError(f"size must be a positive multiple of 64, got {self.size}")
        if self.steps < 2:
            raise ValueError(f"steps must be at least 2, got {self.steps}")
        if self.arithmetic not in ("auto", "authors", "fast"):
            raise ValueError(f"arithmetic must be auto, authors or fast, got {self.arithmetic!r}")
        if self.dtype not in ("auto", "fp16", "bf16", "fp32", "fp64"):
            raise ValueError(f"dtype must be auto, fp16, bf16, fp32 or fp64, got {self.dtype!r}")
        if self.evaluator_scoring not in ("memory", "saved_jpeg"):
            raise ValueError(f"evaluator_scoring must be memory or saved_jpeg, got {self.evaluator_scoring!r}")
        self.nulltext_terms = tuple(self.nulltext_terms)  # a list read back from JSON compares equal
        for name in self.nulltext_terms:
            if name not in NULLTEXT_TERMS and ":" not in str(name):
                raise ValueError(f"unknown null-text loss term {name!r}: use one of {sorted(NULLTEXT_TERMS)} or "
                                 f"'package.module:factory'")

    @classmethod
    def paper(cls, **overrides) -> "HarmonizeConfig":
        """The authors' schedule: their every step, inner iteration and loss, and their numeric quirks."""
        values = dict(schedule="paper", steps=50, refine_iters=2, nulltext_max_inner=5, nulltext_early_stop=0.0,
                      pidinet_grad=False, edge_crop=False, sobel_input_signed=True, nulltext_stale_embedding=True,
                      authors_arithmetic_on_cpu=True, inversion_batch_uncond_only=False, refine_cond_only=False,
                      evaluator_scoring="saved_jpeg")
        values.update(overrides)
        return cls(**values)

    @classmethod
    def fast(cls, **overrides) -> "HarmonizeConfig":
        """zsharm's schedule (the default): the field defaults."""
        return cls(**{"schedule": "fast", **overrides})

    @classmethod
    def named(cls, schedule: str, **overrides) -> "HarmonizeConfig":
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
        return SCHEDULES[schedule](**overrides)

    def replace(self, **changes) -> "HarmonizeConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Every value, JSON-ready: what each result records, and what `from_dict` reruns."""
        data = asdict(self)
        data["nulltext_terms"] = list(self.nulltext_terms)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "HarmonizeConfig":
        """The configuration `to_dict` wrote (e.g. the "config" of a history.json): every field it holds, the
        defaults for any it lacks; a key that is no field is refused rather than dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"not a configuration field: {', '.join(unknown)}")
        return cls(**data)

    def active_terms(self) -> tuple:
        """The null-text loss terms this configuration runs (`use_edges` False leaves "edges" out)."""
        return tuple(name for name in self.nulltext_terms if name != "edges" or self.use_edges)

    def runs_authors_arithmetic(self, device) -> bool:
        """Whether UNet calls on `device` run the authors' arithmetic (see `arithmetic`).

        `paper` on CPU does (`authors_arithmetic_on_cpu`), so that it reproduces their numbers (tests/test_reference.py); on a GPU it keeps the
        paper's every step, inner iteration and loss but computes them in half precision with fused attention,
        which is what makes it several times faster than their fp32 code."""
        import torch
        if self.arithmetic == "auto":
            if device is None:
                from zsharm.distributed import process_device  # what zsharm.models.default_device gives
                device = process_device()
            return self.authors_arithmetic_on_cpu and torch.device(device).type == "cpu"
        return self.arithmetic == "authors"

    def torch_dtype(self, device):
        """The model precision this configuration asks for on `device` (None: the loader's default, which is
        fp16 on a GPU and fp32 on CPU)."""
        import torch
        names = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
        if self.dtype in names:
            return names[self.dtype]
        return torch.float32 if self.runs_authors_arithmetic(device) else None

    def nulltext_inner_steps(self, index: int) -> int:
        return min(index // 10 + 1, self.nulltext_max_inner)


SCHEDULES = {"paper": HarmonizeConfig.paper, "fast": HarmonizeConfig.fast}
DEFAULT_SCHEDULE = "fast"
DEFAULT_MODEL = "stabilityai/stable-diffusion-2-base"
