"""Loading Stable Diffusion, and the tiny random-weight models the tests and the offline demo use.

`load_pipeline` takes a hub id, a local diffusers folder, a single checkpoint file or `tiny`. Tiny models are
written to a cache folder as an ordinary diffusers folder and loaded through the same `from_pretrained` path
as real weights, so nothing in zsharm special-cases them.
"""

import json
import logging
import os
from pathlib import Path

import torch

from zsharm.cache import cache_dir
from zsharm.config import DEFAULT_MODEL
from zsharm.errors import ZsharmError, one_line
from zsharm.model_folders import (SD_SCHEDULER, SUPPORTED, built_once, check_pipeline_folder, clip_tokenizer_files,
                                  publish_model_folder)

log = logging.getLogger(__name__)

TINY_SPECS = {"tiny": 0.1, "tiny-tamed": 1e-3}  # spec -> scale of the UNet output layer
TOY = "toy"  # zsharm's own trained toy prior (zsharm/toy/), shipped in the package
TINY_VERSION = 1  # bump when the tiny architecture or seeding changes, so caches are rebuilt


def default_device() -> torch.device:
    """This process's device: under a launcher (torchrun, accelerate, SLURM, MPI) the GPU of its local rank,
    else the first GPU, else MPS, else the CPU (see zsharm.distributed)."""
    from zsharm.distributed import process_device
    return process_device()


def resolve_device(device) -> torch.device:
    """`device` as a torch.device (None: `default_device()`), or one line naming what is wrong with it."""
    if device is None:
        return default_device()
    try:
        return torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise ZsharmError(f"unknown device {device!r}: {one_line(error)}") from None


def move_to_device(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module.to(device)`, a device this machine lacks (cuda asked for without one) said in one line."""
    try:
        return module.to(device)
    except (RuntimeError, AssertionError) as error:
        raise ZsharmError(f"cannot use device {device}: {one_line(error)}") from None


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if torch.device(device).type in ("cuda", "mps") else torch.float32


def hide_loading_bars():
    """Hide diffusers', transformers' and the hub's loading and download bars from now on, in this process."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging
    for library in (diffusers_logging, transformers_logging):  # "Loading pipeline components", "Loading weights"
        library.disable_progress_bar()
    disable_progress_bars()


def load_pipeline(spec: str = DEFAULT_MODEL, device=None, dtype=None, revision: str = None, variant: str = None,
                  token=None, progress: bool = True):
    """A diffusers StableDiffusionPipeline prepared for zsharm (`prepare_pipeline`), on `device` in `dtype`.

    spec: a hub id (fetched and cached by diffusers on first use), a local diffusers folder, a single
    `.safetensors`/`.ckpt` file (any SD 1.x/2.x checkpoint), `tiny` or `tiny-tamed` (random weights), or `toy`
    (zsharm's trained toy prior, shipped in the package: see `model_companions` for what comes with it).
    revision (a hub branch, tag or commit), variant (e.g. "fp16": the repository's half-size weight files) and
    token (a gated or private repository; by default the hub's own login or $HF_TOKEN) go to from_pretrained.
    progress False hides diffusers' and the hub's loading and download bars (`--quiet`).
    """
    from diffusers import StableDiffusionPipeline
    if not progress:
        hide_loading_bars()

    device = torch.device(device) if device is not None else default_device()
    dtype = dtype if dtype is not None else default_dtype(device)
    if isinstance(dtype, str):
        dtype = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
                 "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}[dtype]
    kwargs = dict(safety_checker=None, requires_safety_checker=False, dtype=dtype)
    hub = {k: v for k, v in dict(revision=revision, variant=variant, token=token).items() if v is not None}
    spec = str(spec)
    log.info("loading %s on %s in %s", spec, device, str(dtype).removeprefix("torch."))
    try:
        if spec in TINY_SPECS:
            pipe = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir(spec)), **kwargs)
        elif spec == TOY:
            from zsharm.toy.prior import verified_model_dir
            pipe = StableDiffusionPipeline.from_pretrained(str(verified_model_dir()), **kwargs)
        elif os.path.isfile(spec):
            if not spec.endswith((".safetensors", ".ckpt")):
                raise ZsharmError(f"model file {spec} is neither .safetensors nor .ckpt")
            pipe = StableDiffusionPipeline.from_single_file(spec, **kwargs)
        elif os.path.isdir(spec):
            check_pipeline_folder(spec)
            pipe = StableDiffusionPipeline.from_pretrained(spec, **kwargs, **hub)
        elif spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith((".safetensors", ".ckpt")):
            raise ZsharmError(f"model {spec}: no such file or folder")
        else:
            pipe = StableDiffusionPipeline.from_pretrained(spec, **kwargs, **hub)
    except ZsharmError:
        raise
    except (OSError, ValueError) as exc:  # hub unreachable, repo missing or gated, files missing
        if spec in TINY_SPECS or spec == TOY or os.path.exists(spec):
            raise ZsharmError(f"could not load model {spec!r}: {_first_sentence(exc)}") from None
        raise ZsharmError(hub_failure(spec, exc)) from None
    pipe = prepare_pipeline(pipe).to(device)
    if pipe.unet.dtype != dtype:  # diffusers versions that ignored the loading keyword
        pipe = pipe.to(dtype=dtype)
    return pipe


def model_folder(spec) -> Path | None:
    """The local folder a model spec names (the toy prior's verified cache folder for `toy`), else None."""
    spec = str(spec) if spec is not None else ""
    if spec == TOY:
        from zsharm.toy.prior import verified_model_dir
        return verified_model_dir()
    return Path(spec) if spec and os.path.isdir(spec) else None


def model_companions(spec) -> dict:
    """What a model folder ships beside its weights, from its zsharm.json: `config` (values the model was made
    for, e.g. the toy prior's 128 px work size), `evaluator` (a checkpoint path) and `describer` (a parameter
    file of zsharm.describe.toy). {} for a model without one (Stable Diffusion)."""
    folder = model_folder(spec)
    if folder is None or not (folder / "zsharm.json").is_file():
        return {}
    info = json.loads((folder / "zsharm.json").read_text())
    out = {"config": dict(info.get("config", {}))}
    for part in ("evaluator", "describer"):
        if info.get(part):
            out[part] = folder / info[part]
    return out


def model_config(spec) -> dict:
    """The config values model `spec` asks for (its zsharm.json), {} if none; a loaded pipeline counts by its
    folder."""
    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        spec = getattr(spec, "name_or_path", None) or getattr(getattr(spec, "config", None), "_name_or_path", None)
    return model_companions(spec).get("config", {}) if spec else {}


def prepare_pipeline(pipe):
    """Make a Stable Diffusion pipeline ready for zsharm, in place, and return it: a DDIM scheduler built from
    the pipeline's own scheduler config (the method is defined on DDIM; betas and offsets stay the checkpoint's),
    every weight frozen (zsharm optimises embeddings, never the networks), eval mode, progress bars off.

    Every pipeline zsharm is handed goes through here: load_pipeline's, Harmonizer(pipe=...)'s and
    run_iteration's. One it cannot drive (SDXL, inpainting, anything not SD 1.x/2.x) is refused in one line."""
    from diffusers import DDIMScheduler
    problem = _unsupported(pipe)
    if problem:
        raise ZsharmError(f"zsharm drives {SUPPORTED}; this pipeline {problem}")
    if not isinstance(pipe.scheduler, DDIMScheduler):
        log.info("scheduler %s replaced by DDIM with the same config", type(pipe.scheduler).__name__)
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.eval()
    return pipe


def _unsupported(pipe) -> str | None:
    """Why zsharm cannot drive `pipe` (a few words), or None."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    kind = type(pipe).__name__
    missing = [name for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
               if getattr(pipe, name, None) is None]
    if missing:
        return f"({kind}) has no {', '.join(missing)}"
    if getattr(pipe, "text_encoder_2", None) is not None:
        return f"is a {kind} (SDXL-style: a second text encoder)"
    if not isinstance(pipe.unet, UNet2DConditionModel) or not isinstance(pipe.vae, AutoencoderKL):
        return f"({kind}) has a {type(pipe.unet).__name__} / {type(pipe.vae).__name__}, not SD's UNet and VAE"
    config = pipe.unet.config
    if config.in_channels != 4:
        return f"({kind}) has a UNet of {config.in_channels} input channels (inpainting or depth), not 4"
    if getattr(config, "addition_embed_type", None) is not None:
        return f"({kind}) has a UNet with {config.addition_embed_type!r} extra conditioning (SDXL-style)"
    prediction = getattr(pipe.scheduler.config, "prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        return f"({kind}) predicts {prediction!r}, not noise or v"
    return None


_WAY_FORWARD = ("use --model tiny (offline, random weights), a local diffusers folder or .safetensors file, or "
                "set HF_HOME to a cache that holds the model")


def hub_failure(repo: str, error: BaseException | None = None) -> str:
    """One line on why hub model `repo` could not be loaded (offline, no connection, not found, gated), what of
    it is cached, and the way forward. diffusers' own message points at a traceback that is never shown."""
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    cached = try_to_load_from_cache(repo, "model_index.json", cache_dir=constants.HF_HUB_CACHE)
    where = (f"only part of it is cached in {constants.HF_HUB_CACHE}" if isinstance(cached, str)
             else f"it is not cached in {constants.HF_HUB_CACHE}")
    if constants.HF_HUB_OFFLINE:
        return (f"could not load model {repo!r}: offline mode (HF_HUB_OFFLINE) is on and {where}; unset "
                f"HF_HUB_OFFLINE to download it once, or {_WAY_FORWARD}")
    try:
        model_info(repo, timeout=10)
    except GatedRepoError:
        return (f"could not load model {repo!r}: it is gated; accept its licence on https://huggingface.co/{repo} "
                f"and log in (`hf auth login`, or `huggingface-cli login`; or set HF_TOKEN), or {_WAY_FORWARD}")
    except RepositoryNotFoundError:
        return (f"could not load model {repo!r}: the Hugging Face Hub has no such model (or it is private: log "
                f"in with `hf auth login`); check the id, or {_WAY_FORWARD}")
    except Exception as no_connection:  # requests/httpx raise their own connection errors
        return (f"could not load model {repo!r}: no connection to the Hugging Face Hub "
                f"({_first_sentence(no_connection)}) and {where}; connect once to download it, or {_WAY_FORWARD}")
    reason = f" ({_first_sentence(error)})" if error is not None else ""
    return f"could not load model {repo!r}{reason}; {where}; try again, or {_WAY_FORWARD}"


def _first_sentence(error) -> str:
    """diffusers' message without its pointer to a traceback that is never shown, as one line."""
    return one_line(" ".join(str(error).split()).split(" Please check out the root cause")[0]
                    or type(error).__name__, limit=200)


def _diffusers_at_least(version: str) -> bool:
    import diffusers
    from packaging.version import Version
    return Version(diffusers.__version__) >= Version(version)


# --- tiny random-weight models -----------------------------------------------------------------------------

def tiny_pipeline_dir(spec: str = "tiny") -> Path:
    """Build (once) and return the cache folder of a tiny SD-2-shaped pipeline."""
    scale = TINY_SPECS[spec]
    return built_once(cache_dir("models") / f"{spec}-v{TINY_VERSION}",
                      lambda path: build_tiny_pipeline(path, unet_out_scale=scale))


def tiny_configs() -> dict:
    """The tiny architecture: SD 2 base's layout (4 levels, cross-attention in the first three down blocks and
    last three up blocks, linear projections) at toy widths, so 16x16 maps exist at 512 px like the real model."""
    unet = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 32, 64, 64), attention_head_dim=(2, 2, 4, 4), cross_attention_dim=32,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                  "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                use_linear_projection=True, norm_num_groups=32)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 64, 64),
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               layers_per_block=1, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, projection_dim=32, hidden_act="gelu",
                bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
    return dict(unet=unet, vae=vae, text_encoder=text, scheduler=dict(SD_SCHEDULER))


def build_tiny_pipeline(out_dir, seed: int = 0, unet_out_scale: float = 0.1) -> Path:
    """Write a seeded random-weight SD-2-shaped pipeline folder (safetensors) to `out_dir`.

    A random UNet predicts noise of unit size whatever its input, so DDIM inversion drifts; scaling its output
    layer (`unet_out_scale`) tames it: 1e-3 inverts almost exactly, 0.1 lets prompts visibly move the image.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    try:
        return _write_tiny_pipeline(tmp, out_dir, seed, unet_out_scale)
    except BaseException:  # an error, Ctrl-C: no half-built folder stays in the cache
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_tiny_pipeline(tmp: Path, out_dir: Path, seed: int, unet_out_scale: float) -> Path:
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    cfg = tiny_configs()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    with torch.no_grad():
        unet.conv_out.weight.mul_(unet_out_scale)
        unet.conv_out.bias.mul_(unet_out_scale)
    vae = AutoencoderKL(**cfg["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    tok_dir = clip_tokenizer_files(tmp / "_bpe")
    # SD 2's tokenizer pads with "!" (id 0); the authors' tiny fixture pads with <|endoftext|>.
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="!",
                              model_max_length=77)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**cfg["scheduler"]), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    return publish_model_folder(tmp, tok_dir, out_dir)
