"""The toy prior: a Stable-Diffusion-shaped model small enough to train on a laptop's CPU (zsharm/toy_lab/train.py).

Same parts as SD 2 (AutoencoderKL with 8x downsampling and 4 latent channels, a CLIP text encoder read through
CLIP's real tokenizer, a UNet2DConditionModel with linear-projection cross-attention, DDIM with SD's betas), at
toy widths and 128 px. zsharm loads it through the same `from_pretrained` path as real weights (`--model toy`).

Its UNet has three levels (16x16, 8x8, 4x4 latents at 128 px), so the maps the method reads are the 16x16
ones: `MODEL_DEFAULTS` (written into the model folder as zsharm.json) sets the work size to 128 and
`attention_res_divisor` to 8 (image/8 = 16x16), where SD 2 at 512 px uses image/32 = 16x16; and the edge loss
to Sobel's term alone (see below).
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

from zsharm.model_folders import SD_SCHEDULER

RESOLUTION = 128
# PiDiNet learnt its edges from photographs (BSDS) and its weights are a download; the toy world's edges are
# its shapes' outlines, which Sobel sees, so the toy prior's edge loss is Sobel's alone (gamma 0) and it runs
# offline. Pass a config with edge_pidinet_weight > 0 to add PiDiNet's term (notebook 05 does).
MODEL_DEFAULTS = {"size": RESOLUTION, "attention_res_divisor": 8, "edge_pidinet_weight": 0.0}


def configs(scaling_factor: float = 1.0) -> dict:
    unet = dict(sample_size=RESOLUTION // 8, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64, 128), attention_head_dim=(2, 4, 8), cross_attention_dim=64,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                use_linear_projection=True, norm_num_groups=16)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64, 64),
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               layers_per_block=1, norm_num_groups=8, sample_size=RESOLUTION, scaling_factor=scaling_factor)
    text = dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, projection_dim=64, hidden_act="gelu",
                bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
    return dict(unet=unet, vae=vae, text_encoder=text, scheduler=dict(SD_SCHEDULER))


def new_models(scaling_factor: float = 1.0):
    """Freshly initialised (vae, text_encoder, unet) of the toy architecture."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = configs(scaling_factor)
    return (AutoencoderKL(**cfg["vae"]), CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
            UNet2DConditionModel(**cfg["unet"]))


def tokenizer(folder: Path):
    """CLIP's real tokenizer, padded with "!" as SD 2's is (files written into `folder`)."""
    from transformers import CLIPTokenizer

    from zsharm.model_folders import clip_tokenizer_files
    tok_dir = clip_tokenizer_files(Path(folder))
    return CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="!",
                         model_max_length=77)


# ------------------------------------------------------------------------------------------ the shipped weights

def shipped_dir() -> Path:
    """zsharm/assets/toy: the trained weights (fp16 safetensors), their configs and SHA256SUMS."""
    import importlib.resources
    return Path(str(importlib.resources.files("zsharm") / "assets" / "toy"))


def sha256(path) -> str:
    from zsharm.cache import sha256_of  # the project's one file hasher
    return sha256_of(path)


# Every shipped file, pinned: a changed or truncated file is refused before anything reads it.
def pinned_files() -> dict[str, str]:
    sums = shipped_dir() / "SHA256SUMS"
    if not sums.is_file():
        from zsharm.errors import ZsharmError
        raise ZsharmError(f"the toy prior is not in this installation ({sums} missing); "
                          "train it with `zsharm toy train` or reinstall zsharm")
    pins = {}
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        pins[name.lstrip("*")] = digest
    return pins


def verified_model_dir() -> Path:
    """The toy pipeline as a diffusers folder in the cache (built once from the shipped files after each one's
    SHA-256 is checked), with CLIP's tokenizer files and zsharm.json."""
    from zsharm.cache import cache_dir
    from zsharm.errors import ZsharmError
    from zsharm.model_folders import built_once, publish_model_folder

    pins = pinned_files()
    version = hashlib.sha256("".join(sorted(pins.values())).encode()).hexdigest()[:12]

    def build(path: Path):
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            for name, digest in pins.items():
                source = shipped_dir() / name
                if not source.is_file() or sha256(source) != digest:
                    raise ZsharmError(f"toy prior file {source} is missing or does not match its pinned SHA-256; "
                                      "reinstall zsharm")
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, tmp / name)
            tok = tokenizer(tmp / "_bpe")
            tok.save_pretrained(str(tmp / "tokenizer"))
            publish_model_folder(tmp, tmp / "_bpe", path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    return built_once(cache_dir("models") / f"toy-{version}", build)
