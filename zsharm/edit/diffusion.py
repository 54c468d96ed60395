"""What every stage shares: model calls (counted), DDIM steps, VAE encode/decode, prompt embeddings.

Each stage module (inversion, refinement, nulltext, prompt_to_prompt, blending) is written against these few
functions, so the maths of the paper reads in one place per stage and the bookkeeping lives here.
"""

from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from zsharm.config import HarmonizeConfig


@dataclass
class CallCounter:
    """Counts model work per stage: UNet calls and image evaluations (batch rows), with and without
    gradients, VAE encodes/decodes, PiDiNet passes, text-encoder calls.

        counts.total("unet_images")                  # every image evaluation of the iteration
        counts.total("unet", stage="nulltext", grad=True)
        counts.per_stage("unet_images")              # {"inversion": 49, "refinement": 98, ...}
        counts.table()                               # {"nulltext/unet/grad": 49, ...}, for files
    """
    calls: Counter = field(default_factory=Counter)  # (stage, what, grad: bool) -> n
    suffix: str = ""  # "_recomputed" while a forward is computed again (see optimizer_step)

    def add(self, stage: str, what: str, batch: int = 1, grad: bool = False, n: int = 1):
        self.calls[(stage, what + self.suffix, bool(grad))] += n
        if what == "unet":
            self.calls[(stage, "unet_images" + self.suffix, bool(grad))] += batch * n

    @contextmanager
    def recomputing(self):
        """Within the block calls are counted as `<what>_recomputed`, apart from the schedule's own."""
        self.suffix = "_recomputed"
        try:
            yield
        finally:
            self.suffix = ""

    def total(self, what: str, stage: str = None, grad: bool = None) -> int:
        return sum(n for (s, w, g), n in self.calls.items()
                   if w == what and (stage is None or s == stage) and (grad is None or g == grad))

    def per_stage(self, what: str, grad: bool = None) -> dict:
        stages = dict.fromkeys(s for s, w, g in self.calls if w == what)  # in the order stages ran
        return {s: self.total(what, s, grad) for s in stages}

    def only(self, whats) -> "CallCounter":
        """The entries whose `what` is in `whats` (e.g. the model work, without text-encoder calls)."""
        return CallCounter(Counter({k: n for k, n in self.calls.items() if k[1] in whats and n}))

    def __le__(self, other: "CallCounter") -> bool:
        return all(n <= other.calls.get(k, 0) for k, n in self.calls.items())

    def table(self) -> dict:
        return {f"{s}/{w}/{'grad' if g else 'nograd'}": n for (s, w, g), n in sorted(self.calls.items())}

    @classmethod
    def from_table(cls, table: dict) -> "CallCounter":
        calls = Counter()
        for key, n in table.items():
            stage, what, grad = key.split("/")
            calls[(stage, what, grad == "grad")] += n
        return cls(calls)


@dataclass
class Run:
    """One harmonization iteration's shared state: the models, the hyperparameters and the counters."""
    pipe: object
    config: HarmonizeConfig
    counter: CallCounter = field(default_factory=CallCounter)
    progress: bool = True

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def device(self):
        return self.pipe.unet.device

    @property
    def dtype(self):
        return self.pipe.unet.dtype

    @property
    def work_dtype(self):
        """Latents, embeddings and losses: float32 (optimised in full precision under an fp16 model), or
        float64 when the model itself runs in float64 (numerical analyses)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    @property
    def runs_authors_arithmetic(self) -> bool:
        return self.config.runs_authors_arithmetic(self.device)

    @property
    def fused(self) -> bool:
        """Fused attention (SDPA) wherever no map is needed; never under the authors' arithmetic."""
        return self.config.fused_attention and not self.runs_authors_arithmetic

    def arithmetic(self, stage: str):
        """Within this block UNet calls of `stage` use the authors' attention arithmetic when the configuration
        asks for it, and the UNet's own (fused) attention otherwise."""
        from contextlib import nullcontext
        if not self.runs_authors_arithmetic:
            return nullcontext()
        from zsharm.edit.attention import authors_attention
        return authors_attention(self.unet, stage)

    def gradient_scaler(self):
        """Loss scaling for a half-precision model: the optimised embeddings stay float32, but their gradients
        flow back through fp16 activations, where small ones underflow to zero and large ones overflow (see
        `optimizer_step`). Under fp32 or bf16 the scaler is disabled and changes nothing."""
        enabled = self.dtype == torch.float16 and self.device.type in ("cuda", "cpu")
        return torch.amp.GradScaler(self.device.type, init_scale=2.0 ** 10, growth_interval=50, enabled=enabled)


MAX_SCALE_RETRIES = 24


def optimizer_step(scaler, optimizer, compute_loss, counter: "CallCounter" = None) -> int:
    """zero_grad, `compute_loss(again=False)`, backward and step, through `scaler` (torch.amp.GradScaler) when
    it is enabled.

    A scaled backward whose gradients overflow is not skipped, as mixed-precision training would skip it: the
    paper's every optimiser step counts. The forward is computed again, `compute_loss(again=True)` (it must
    rebuild every part of the graph the first backward freed; its model calls are counted apart, as
    "recomputed", by `counter`), and the backward repeated at half the scale until the gradients are finite. No
    graph is kept between tries, so loss scaling costs no memory. Returns the number of repeats (0 almost always).
    """
    with torch.enable_grad():  # callers may sit in a no_grad block
        return _step(scaler, optimizer, compute_loss, counter)


def _step(scaler, optimizer, compute_loss, counter) -> int:
    optimizer.zero_grad()
    loss = compute_loss(again=False)
    if not scaler.is_enabled():
        loss.backward()
        optimizer.step()
        return 0
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for retry in range(MAX_SCALE_RETRIES + 1):
        if retry:
            optimizer.zero_grad()
            with counter.recomputing() if counter is not None else nullcontext():
                loss = compute_loss(again=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if all(p.grad is None or torch.isfinite(p.grad).all() for p in params):
            scaler.step(optimizer)
            scaler.update()
            return retry
        scaler.update()  # records the overflow: the scale halves
    from zsharm.errors import ZsharmError
    raise ZsharmError("gradients overflow in half precision even unscaled; run in fp32 (--dtype fp32)")


def unet_noise(run: Run, stage: str, latents, t, context, guidance: float, rows: str = "both"):
    """The classifier-free-guided noise prediction for `latents` (B rows), as the authors' diffusion_step.

    context holds B unconditional rows then B conditional rows. rows="uncond" or "cond" runs only that half:
    with guidance 0 only the unconditional prediction matters, so the conditional half can be skipped.
    """
    grad = torch.is_grad_enabled() and (context.requires_grad or latents.requires_grad)
    b = latents.shape[0]
    if rows == "both":
        x, ctx = torch.cat([latents] * 2), context
    elif rows == "uncond":
        x, ctx = latents, context[:b]
    else:
        x, ctx = latents, context[b:]
    run.counter.add(stage, "unet", batch=x.shape[0], grad=grad)
    out = run.unet(x.to(run.dtype), t, encoder_hidden_states=ctx.to(run.dtype)).sample.to(latents.dtype)
    if rows != "both":
        return out
    uncond, cond = out.chunk(2)
    return uncond + guidance * (cond - uncond)


def ddim_step(run: Run, noise, t, latents):
    """One denoising DDIM step (eta 0) with the scheduler the checkpoint came with."""
    return run.scheduler.step(noise, t, latents).prev_sample


def epsilon(run: Run, model_output, t, latents):
    """The noise the model predicts, whatever its parameterisation (SD 2 768-v predicts v)."""
    if run.scheduler.config.prediction_type == "epsilon":
        return model_output
    a = run.scheduler.alphas_cumprod[t]
    if run.scheduler.config.prediction_type == "v_prediction":
        return a.sqrt() * model_output + (1 - a).sqrt() * latents
    raise ValueError(f"unsupported prediction type {run.scheduler.config.prediction_type}")


def encode_image(run: Run, image, generator: torch.Generator):
    """VAE posterior *sample* (as the authors do), scaled to latent units. image: 1x3xHxW in [-1, 1]."""
    run.counter.add("inversion", "vae_encode")
    posterior = run.vae.encode(image.to(run.device, run.vae.dtype)).latent_dist
    return (run.vae.config.scaling_factor * posterior.sample(generator=generator)).to(run.work_dtype)


def decode_latents(run: Run, stage: str, latents):
    """Latents -> image in [0, 1] (Bx3xHxW float), differentiable when gradients are on."""
    run.counter.add(stage, "vae_decode", batch=latents.shape[0], grad=torch.is_grad_enabled())
    image = run.vae.decode((latents / run.vae.config.scaling_factor).to(run.vae.dtype)).sample.to(run.work_dtype)
    return (image / 2 + 0.5).clamp(0, 1)


def to_uint8(image01):
    """Bx3xHxW in [0,1] -> BxHxWx3 uint8 by truncation, as the authors' latent2image."""
    return (image01.detach().cpu().permute(0, 2, 3, 1).numpy() * 255).astype("uint8")


def tokenize(run: Run, prompts):
    tok = run.pipe.tokenizer
    return tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids.to(run.device)


def text_embeddings(run: Run, stage: str, prompts):
    """CLIP last hidden states for a list of prompts (B x 77 x D), float32."""
    ids = tokenize(run, prompts)
    run.counter.add(stage, "text_encoder", batch=len(prompts), grad=torch.is_grad_enabled())
    return run.pipe.text_encoder(ids)[0].to(run.work_dtype)


def embedding_layer(text_encoder):
    # transformers 5 puts the embeddings on the model itself; 4.x under .text_model
    return getattr(text_encoder, "text_model", text_encoder).embeddings


@contextmanager
def overridden_token_embeddings(text_encoder, overrides):
    """Within the block, the input embeddings (token + position) at the given (row, position) pairs are
    replaced by the given tensors, so gradients reach them through the text encoder.

    overrides: list of (row, position, tensor of shape 1xD). Uses a forward hook, not patching.
    """
    def hook(module, args, output):
        output = output.clone()
        for row, pos, value in overrides:
            output[row:row + 1, pos] = value.to(output.dtype)
        return output

    handle = embedding_layer(text_encoder).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def timesteps(run: Run):
    run.scheduler.set_timesteps(run.config.steps)
    return run.scheduler.timesteps


def progress(run: Run, iterable, desc: str):
    from zsharm.bars import bar
    return bar(iterable, desc=desc, disable=not run.progress, leave=False)


def image_to_tensor(image_pil) -> torch.Tensor:
    """PIL RGB -> 1x3xHxW float32 in [-1, 1] (the authors' preprocess, after their resize).

    The tensor is a transposed view of the H x W x 3 array, i.e. channels-last in memory, as theirs is; the
    convolutions then take their channels-last path, which rounds differently (by ~1e-4 in the latent)."""
    array = np.asarray(image_pil.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array[None].transpose(0, 3, 1, 2)) * 2.0 - 1.0
