"""Train the toy world's models, from nothing, seeded and resumable:

    zsharm toy train --work ~/toy-training --export zsharm/assets/toy     # everything, then the shipped folder

Parts, each skipped when its finished checkpoint is in the work folder (a killed run resumes from the last
checkpoint of the part it was in, and gives the same weights as an uninterrupted one):

1. `data`: harmonious scenes (object and scene under one condition) from the world's training seeds;
2. `vae`: the autoencoder on 64 px crops (it is convolutional; crops make it 4x cheaper);
3. `latents`: every scene encoded once; the latent scaling factor (SD's 0.18215) measured as 1/std;
4. `decoder`: the decoder alone fine-tuned on whole scenes, the encoder frozen (so it can run beside `unet`);
5. `unet`: the UNet and the text encoder together, epsilon prediction, 10 % empty captions (for classifier-free
   guidance), an exponential moving average of the weights kept and shipped;
5. `composites`: composites with their ground truth, for the evaluator, in iHarmony4's layout;
   `evaluator`: zsharm's own `train_evaluator` (a small ResNet, not the authors' ResNet-50) on the composites;
6. `describer`: the statistics classifier of zsharm/describe/toy.py, fitted on the scenes.

Two processes of one thread each use both cores: `--parts data,vae,latents,unet` in one and
`--parts decoder,composites,evaluator,describer` in the other (the describer waits for `data`).
"""

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from zsharm.toy import prior, world

PARTS = ("data", "vae", "latents", "unet", "decoder", "composites", "evaluator", "describer")


class Recipe:
    """Every number of the training run (written to the work folder and into the exported zsharm.json)."""
    seed = 0
    scenes = 6000                 # harmonious training scenes
    composites = 2000             # training composites for the evaluator
    vae_steps, vae_batch, vae_crop, vae_lr, vae_kl = 2400, 16, 64, 2e-3, 1e-6
    # then the decoder alone on whole 128 px scenes (the encoder, so the UNet's latents, unchanged)
    decoder_steps, decoder_batch, decoder_lr = 1500, 8, 5e-4
    unet_steps, unet_batch, unet_lr, unet_uncond = 2200, 32, 5e-4, 0.1
    ema = 0.999
    # in phases, each from the last one's best checkpoint with a fresh cosine schedule: 4 epochs at lr 1e-3,
    # 8 at 5e-4, 6 at 2e-4
    evaluator_arch, evaluator_size, evaluator_phases = "small", 128, ((4, 1e-3), (8, 5e-4), (6, 2e-4))
    checkpoint_every = 100
    log_every = 10

    @classmethod
    def as_dict(cls) -> dict:
        return {k: v for k, v in vars(cls).items() if not k.startswith("_") and not callable(v)
                and not isinstance(v, classmethod)}


def lr_at(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_atomic(obj, path: Path) -> None:
    temp = path.with_name(path.name + ".tmp")
    torch.save(obj, temp)
    temp.replace(path)


def log_line(work: Path, part: str, **values) -> None:
    with open(work / f"{part}_log.jsonl", "a") as handle:
        handle.write(json.dumps(values) + "\n")


def psnr_of(mse: torch.Tensor) -> float:
    """PSNR in dB of pixels in [-1, 1] (peak-to-peak 2)."""
    return 10 * math.log10(4 / max(mse.item(), 1e-12))


def drive(work: Path, part: str, *, steps: int, start: int, optimizer, peak_lr: float, loss_of, checkpoint,
          recipe=Recipe, seed_offset: int = 0, warmup: int = 100, clip=None, after_step=None,
          checkpoint_last: bool = False) -> None:
    """The step loop every trained part runs, from step `start` (a resumed run's) to `steps`.

    Each step: a generator seeded by (recipe.seed, `seed_offset`, step), so a resumed run draws what an
    uninterrupted one would; the learning rate of `lr_at`; `loss_of(step, generator)` -> (loss, measures: more
    floats for the log); backward, the gradient norm of `clip`'s parameters clipped at 1, the optimizer's step,
    `after_step(step)` (the UNet's moving average). Then the bar (the PSNR where the part measures one, else the
    loss), a line in <part>_log.jsonl every `recipe.log_every` steps, and `checkpoint()` with the step in
    <part>.pt every `recipe.checkpoint_every` steps (and after the last with `checkpoint_last`).
    """
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=part)
    for step in bar:
        g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + seed_offset + step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, peak_lr, warmup=warmup)
        loss, measures = loss_of(step, g)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(clip, 1.0)
        optimizer.step()
        if after_step is not None:
            after_step(step)
        if "psnr" in measures:
            bar.set_postfix(psnr=f"{measures['psnr']:.1f}")
        else:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % recipe.log_every == 0:
            log_line(work, part, step=step, loss=loss.item(), **measures, time=time.time())
        if (step + 1) % recipe.checkpoint_every == 0 or (checkpoint_last and step + 1 == steps):
            save_atomic({**checkpoint(), "step": step + 1}, work / f"{part}.pt")


# ------------------------------------------------------------------------------------------------- data

def make_data(work: Path, recipe=Recipe) -> None:
    scenes = work / "scenes.npz"
    if not scenes.is_file():
        images = np.zeros((recipe.scenes, world.SIZE, world.SIZE, 3), np.uint8)
        masks = np.zeros((recipe.scenes, world.SIZE, world.SIZE), bool)
        captions = []
        for i in tqdm(range(recipe.scenes), desc="rendering scenes"):
            images[i], caption, masks[i] = world.harmonious(world.TRAIN_SEEDS[i])
            captions.append(caption)
        temp = work / "scenes.tmp.npz"
        np.savez(temp, images=images, masks=masks, captions=np.array(captions))
        temp.replace(scenes)


def make_composites(work: Path, recipe=Recipe) -> None:
    folder = work / "composites"
    if not (folder / "done").is_file():
        write_composites(folder, [world.TRAIN_SEEDS[500_000 + i] for i in range(recipe.composites)],
                         "train", desc="rendering training composites")
        (folder / "done").touch()


def write_composites(folder: Path, seeds, split: str, desc: str = "rendering composites") -> None:
    """Composites of `seeds` in iHarmony4's layout (PNG): composite_images/t<seed>_1_1.png, masks/t<seed>_1.png,
    real_images/t<seed>.png, <folder name>_<split>.txt, and captions.txt (the true descriptions)."""
    from PIL import Image
    for sub in ("composite_images", "masks", "real_images"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    names, captions = [], []
    for seed in tqdm(list(seeds), desc=desc):
        made = world.make_composite(seed)
        name = f"t{seed}_1_1.png"
        Image.fromarray(made.composite).save(folder / "composite_images" / name)
        Image.fromarray(made.mask.astype(np.uint8) * 255).save(folder / "masks" / f"t{seed}_1.png")
        Image.fromarray(made.truth).save(folder / "real_images" / f"t{seed}.png")
        names.append(name)
        captions.append(f"{name}\t{made.source},{made.target}")
    (folder / f"{folder.name}_{split}.txt").write_text("\n".join(names) + "\n")
    (folder / "captions.txt").write_text("\n".join(captions) + "\n")


def load_scenes(work: Path):
    data = np.load(work / "scenes.npz")
    return data["images"], data["masks"], [str(c) for c in data["captions"]]


def to_unit(images_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 127.5 - 1


# -------------------------------------------------------------------------------------------------- VAE

def train_vae(work: Path, device, recipe=Recipe) -> None:
    final = work / "vae_final.pt"
    if final.is_file():
        return
    images, _, _ = load_scenes(work)
    torch.manual_seed(recipe.seed)
    vae = prior.new_models()[0].to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    start = resume(work / "vae.pt", {"model": vae, "optimizer": optimizer})

    def loss_of(step, g):  # a random crop of a random batch; the posterior sampled with the step's generator
        idx = torch.randint(len(images), (recipe.vae_batch,), generator=g).numpy()
        top, left = torch.randint(0, world.SIZE - recipe.vae_crop + 1, (2,), generator=g).tolist()
        x = to_unit(images[idx, top:top + recipe.vae_crop, left:left + recipe.vae_crop]).to(device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(device)
        mse = F.mse_loss(vae.decode(z).sample, x)
        return mse + recipe.vae_kl * posterior.kl().mean(), {"psnr": psnr_of(mse)}

    drive(work, "vae", steps=recipe.vae_steps, start=start, optimizer=optimizer, peak_lr=recipe.vae_lr,
          loss_of=loss_of, checkpoint=lambda: {"model": vae.state_dict(), "optimizer": optimizer.state_dict()},
          recipe=recipe)
    save_atomic({"model": vae.state_dict()}, final)


def resume(path: Path, things: dict) -> int:
    """Load a part's checkpoint into `things` (name -> module or optimizer); the step to continue from."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    for name, thing in things.items():
        thing.load_state_dict(state[name])
    return int(state["step"])


def trained_vae(work: Path, device, scaling_factor: float = 1.0):
    """The trained autoencoder, with the fine-tuned decoder where that part has run."""
    vae = prior.new_models(scaling_factor)[0]
    vae.load_state_dict(torch.load(work / "vae_final.pt", map_location="cpu", weights_only=True)["model"])
    if (work / "decoder_final.pt").is_file():
        vae.load_state_dict(torch.load(work / "decoder_final.pt", map_location="cpu", weights_only=True)["model"])
    return vae.to(device).eval()


def train_decoder(work: Path, device, recipe=Recipe) -> None:
    """Fine-tune the decoder (and post_quant_conv) on whole scenes with the encoder frozen, as Stable Diffusion's
    own "ft-MSE" autoencoder was: sharper pictures from the very latents the UNet learnt."""
    final = work / "decoder_final.pt"
    if final.is_file():
        return
    images, _, _ = load_scenes(work)
    vae = trained_vae(work, device)
    vae.requires_grad_(False)
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in decoder:
        p.requires_grad_(True)
    vae.decoder.train()
    optimizer = torch.optim.AdamW(decoder, lr=recipe.decoder_lr, weight_decay=0.0)
    start = resume(work / "decoder.pt", {"model": vae, "optimizer": optimizer})

    def loss_of(step, g):  # whole scenes; the frozen encoder's latents sampled with the step's generator
        idx = torch.randint(len(images), (recipe.decoder_batch,), generator=g).numpy()
        x = to_unit(images[idx]).to(device)
        with torch.no_grad():
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(device)
        mse = F.mse_loss(vae.decode(z).sample, x)
        return mse, {"psnr": psnr_of(mse)}

    drive(work, "decoder", steps=recipe.decoder_steps, start=start, optimizer=optimizer, peak_lr=recipe.decoder_lr,
          loss_of=loss_of, checkpoint=lambda: {"model": vae.state_dict(), "optimizer": optimizer.state_dict()},
          recipe=recipe, seed_offset=11)
    save_atomic({"model": vae.state_dict()}, final)


# ---------------------------------------------------------------------------------------------- latents

@torch.no_grad()
def encode_latents(work: Path, device) -> None:
    path = work / "latents.pt"
    if path.is_file():
        return
    images, _, _ = load_scenes(work)
    vae = trained_vae(work, device)
    means, stds = [], []
    for start in tqdm(range(0, len(images), 64), desc="encoding scenes"):
        posterior = vae.encode(to_unit(images[start:start + 64]).to(device)).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    mean, std = torch.cat(means), torch.cat(stds)
    g = torch.Generator().manual_seed(0)
    scaling = 1.0 / float((mean + std * torch.randn(mean.shape, generator=g)).std())
    save_atomic({"mean": mean, "std": std, "scaling_factor": scaling}, path)


# ----------------------------------------------------------------------------------------- UNet + text

def token_ids(work: Path, captions: list[str]) -> torch.Tensor:
    tok = prior.tokenizer(work / "_bpe")
    return tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def train_unet(work: Path, device, recipe=Recipe) -> None:
    final = work / "unet_final.pt"
    if final.is_file():
        return
    from diffusers import DDIMScheduler
    _, _, captions = load_scenes(work)
    latents = torch.load(work / "latents.pt", weights_only=True)
    ids = token_ids(work, captions + [""])
    empty, ids = ids[-1], ids[:-1]
    alphas = DDIMScheduler(**prior.configs()["scheduler"]).alphas_cumprod

    torch.manual_seed(recipe.seed + 1)
    _, text_encoder, unet = prior.new_models()
    text_encoder.to(device).train()
    unet.to(device).train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=0.0)
    start = 0
    if (work / "unet.pt").is_file():
        state = torch.load(work / "unet.pt", map_location="cpu", weights_only=True)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        ema = [e.to(device) for e in state["ema"]]
        start = int(state["step"])

    def loss_of(step, g):  # epsilon prediction; 10 % of captions emptied, for classifier-free guidance
        idx = torch.randint(len(ids), (recipe.unet_batch,), generator=g)
        z0 = (latents["mean"][idx] + latents["std"][idx] * torch.randn(latents["mean"][idx].shape, generator=g))
        z0 = z0 * latents["scaling_factor"]
        drop = torch.rand(recipe.unet_batch, generator=g) < recipe.unet_uncond
        batch_ids = torch.where(drop[:, None], empty[None], ids[idx])
        t = torch.randint(0, len(alphas), (recipe.unet_batch,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
        context = text_encoder(batch_ids.to(device))[0]
        prediction = unet(noisy.to(device), t.to(device), context).sample
        return F.mse_loss(prediction, noise.to(device)), {}

    @torch.no_grad()
    def moving_average(step):
        decay = min(recipe.ema, (1 + step) / (10 + step))
        for e, p in zip(ema, params):
            e.lerp_(p.detach(), 1 - decay)

    drive(work, "unet", steps=recipe.unet_steps, start=start, optimizer=optimizer, peak_lr=recipe.unet_lr,
          loss_of=loss_of, recipe=recipe, seed_offset=7, warmup=200, clip=params, after_step=moving_average,
          checkpoint=lambda: {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                              "optimizer": optimizer.state_dict(), "ema": [e.cpu() for e in ema]},
          checkpoint_last=True)
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    save_atomic({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict()}, final)


# ------------------------------------------------------------------------------------ evaluator, describer

def train_toy_evaluator(work: Path, device, recipe=Recipe) -> None:
    """zsharm's train_evaluator in phases; a phase interrupted starts again (it saves its best epoch as it goes,
    so only a phase's finished mark, not its file, says it is done)."""
    import shutil

    from zsharm.decide.training import train_evaluator
    if (work / "evaluator.safetensors").is_file():
        return
    init = None
    for phase, (epochs, lr) in enumerate(recipe.evaluator_phases, start=1):
        out = work / f"evaluator_phase{phase}.safetensors"
        if not (work / f"evaluator_phase{phase}.done").is_file():
            train_evaluator(work / "composites", out, epochs=epochs, batch_size=32, size=recipe.evaluator_size,
                            arch=recipe.evaluator_arch, lr=lr, seed=recipe.seed + phase - 1, device=device,
                            val_fraction=0.1, init=init)
            (work / f"evaluator_phase{phase}.done").touch()
        init = out
    shutil.copyfile(init, work / "evaluator.safetensors")


def fit_toy_describer(work: Path) -> None:
    out = work / "describer.json"
    if out.is_file():
        return
    while not (work / "scenes.npz").is_file():
        time.sleep(10)
    from zsharm.describe.toy import fit
    images, masks, captions = load_scenes(work)
    model = fit(images, masks, captions)
    out.write_text(json.dumps(model, indent=1))


# ----------------------------------------------------------------------------------------------- export

def export(work: Path, out: Path) -> None:
    """Write the shipped folder: the pipeline in fp16 safetensors, zsharm.json, the evaluator, the describer,
    SHA256SUMS, and the loss curves as a plot."""
    import shutil

    from diffusers import DDIMScheduler, StableDiffusionPipeline
    latents = torch.load(work / "latents.pt", weights_only=True)
    vae = trained_vae(work, "cpu", latents["scaling_factor"])
    _, text_encoder, unet = prior.new_models()
    state = torch.load(work / "unet_final.pt", map_location="cpu", weights_only=True)
    unet.load_state_dict(state["unet"])
    text_encoder.load_state_dict(state["text_encoder"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=prior.tokenizer(work / "_bpe"),
                                   unet=unet, scheduler=DDIMScheduler(**prior.configs()["scheduler"]),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    temp = out.with_name(out.name + ".tmp")
    shutil.rmtree(temp, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(str(temp), safe_serialization=True)
    shutil.rmtree(temp / "tokenizer")  # rebuilt from the CLIP vocabulary zsharm ships
    half_evaluator(work / "evaluator.safetensors", temp / "evaluator.safetensors")
    shutil.copyfile(work / "describer.json", temp / "describer.json")
    minutes = training_minutes(work)
    (temp / "zsharm.json").write_text(json.dumps({
        "what": "zsharm's toy prior: trained on synthetic shapes (zsharm/toy/world.py), not Stable Diffusion",
        "config": prior.MODEL_DEFAULTS, "evaluator": "evaluator.safetensors", "describer": "describer.json",
        "recipe": Recipe.as_dict(), "training_minutes": minutes}, indent=1) + "\n")
    files = sorted(p for p in temp.rglob("*") if p.is_file())
    (temp / "SHA256SUMS").write_text("".join(f"{prior.sha256(p)}  {p.relative_to(temp).as_posix()}\n"
                                             for p in files))
    plot_losses(work, work / "training.png")  # the course shows it: copy it to figures/toy_training.png
    if out.exists():
        shutil.rmtree(out)
    temp.replace(out)


def half_evaluator(source: Path, out: Path) -> None:
    """The evaluator's checkpoint in fp16 (half the bytes; loading casts it back), its metadata kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(source), framework="pt") as file:
        state = {k: file.get_tensor(k) for k in file.keys()}
        metadata = file.metadata()
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(out), metadata=metadata)


def training_minutes(work: Path) -> dict:
    minutes = {}
    for part in ("vae", "decoder", "unet"):
        rows = [json.loads(line) for line in (work / f"{part}_log.jsonl").read_text().splitlines()]
        minutes[part] = round((rows[-1]["time"] - rows[0]["time"]) / 60, 1)
    return minutes


def plot_losses(work: Path, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, part, key, label in ((axes[0], "vae", "psnr", "VAE round trip PSNR (dB, 64 px crops)"),
                                 (axes[1], "unet", "loss", "UNet noise-prediction loss (MSE)")):
        rows = [json.loads(line) for line in (work / f"{part}_log.jsonl").read_text().splitlines()]
        steps = np.array([r["step"] for r in rows])
        values = np.array([r[key] for r in rows])
        ax.plot(steps, values, lw=0.6, alpha=0.4)
        width = 20
        if len(values) > width:
            ax.plot(steps[width - 1:], np.convolve(values, np.ones(width) / width, "valid"), lw=1.5)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        if part == "unet":
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def train(work, parts=PARTS, device="cpu", export_to=None) -> None:
    work = Path(work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    (work / "recipe.json").write_text(json.dumps(Recipe.as_dict(), indent=1))
    steps = {"data": lambda: make_data(work), "composites": lambda: make_composites(work), "vae": lambda: train_vae(work, device),
             "latents": lambda: encode_latents(work, device), "unet": lambda: train_unet(work, device),
             "decoder": lambda: train_decoder(work, device),
             "evaluator": lambda: train_toy_evaluator(work, device), "describer": lambda: fit_toy_describer(work)}
    for part in parts:
        steps[part]()
    if export_to is not None:
        export(work, Path(export_to))
