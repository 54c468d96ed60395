"""Model folders on disk, below the loading in zsharm.models: checking that a local folder is a diffusers pipeline
zsharm can drive, building a model folder into the cache once (a file lock between processes, no half-built folder
left behind), and CLIP's tokenizer files from the vocabulary zsharm ships.

zsharm.toy.prior builds the toy prior's folder with these, and zsharm.models loads it: both sit above this module,
which imports neither (no torch, no diffusers).
"""

import gzip
import importlib.resources
import json
import logging
import os
from pathlib import Path

from zsharm.cache import cache_dir
from zsharm.errors import ZsharmError

log = logging.getLogger(__name__)

SUPPORTED = "Stable Diffusion 1.x / 2.x text-to-image pipelines (StableDiffusionPipeline)"
# Stable Diffusion's noise schedule (its scheduler_config.json), which the tiny model and the toy prior share:
# the method's DDIM arithmetic is the same on them as on the real weights
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def check_pipeline_folder(folder: str) -> None:
    """`folder` holds a diffusers pipeline zsharm can drive: refused in one line when it has no model_index.json,
    or when that index names an SDXL (or other two-text-encoder) pipeline, before gigabytes of weights are read."""
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise ZsharmError(f"model folder {folder} has no model_index.json (not a diffusers pipeline folder)")
    try:
        index = json.loads(Path(folder, "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ZsharmError(f"model folder {folder}: unreadable model_index.json ({exc})") from None
    kind = index.get("_class_name", "")
    if "text_encoder_2" in index or "XL" in kind:
        raise ZsharmError(f"model {folder} is a {kind or 'two-text-encoder'} pipeline; zsharm drives {SUPPORTED}")


def built_once(path: Path, build) -> Path:
    """`path`, a model folder, built by `build(path)` unless it is there; a file lock makes other processes
    wait for the one building it instead of building it too (sd2-random is 2.6 GB)."""
    from filelock import FileLock
    sweep_stale_folders(path)
    if not (path / "model_index.json").is_file():
        with FileLock(str(cache_dir(".locks") / f"{path.name}.lock")):
            if not (path / "model_index.json").is_file():
                log.info("building %s (once)", path)
                build(path)
    return path


def sweep_stale_folders(path: Path) -> None:
    """Remove `<path>.tmp<pid>` folders that processes killed mid-build (SIGKILL, power loss) left behind."""
    import shutil

    from zsharm.io.files import process_alive, temp_owner
    for temp in path.parent.glob(f"{path.name}.tmp*"):
        pid = temp_owner(temp.name)
        if temp.is_dir() and pid is not None and pid != os.getpid() and not process_alive(pid):
            shutil.rmtree(temp, ignore_errors=True)


def clip_tokenizer_files(out_dir: Path) -> Path:
    """Write CLIP's real BPE tokenizer (vocab.json + merges.txt) from the vocabulary zsharm ships
    (zsharm/assets/clip/, OpenAI CLIP's bpe_simple_vocab_16e6.txt.gz, MIT: see NOTICE)."""
    bpe = importlib.resources.files("zsharm") / "assets" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    with bpe.open("rb") as packed:
        merges = gzip.decompress(packed.read()).decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    byte_chars = _bytes_to_unicode()
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return out_dir


def _bytes_to_unicode() -> list:
    # GPT-2/CLIP byte-level BPE: printable bytes map to themselves, the rest to code points from 256 on.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    codes = printable + [256 + i for i in range(len(extra))]
    return [chr(c) for c in codes]


def publish_model_folder(tmp: Path, tok_dir: Path, out_dir: Path) -> Path:
    """Drop the temporary BPE files and move a finished model folder into place, atomically; if another
    process finished first, keep its copy."""
    for name in ("vocab.json", "merges.txt"):
        (tok_dir / name).unlink()
    tok_dir.rmdir()
    if out_dir.exists():
        import shutil
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out_dir)
    return out_dir
