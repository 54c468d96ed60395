"""Everything about a harmonization request that can be checked before a model is loaded.

A mistake found after minutes of diffusion costs the user those minutes; so the `harmonize` command checks its
command line first (zsharm.commands.harmonize), and `Harmonizer` calls `check_inputs` and `check_prompts`: files, mask at
work size, output location and format, prompts, numbers and device, each refused in one line that names the
problem and the way out.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from zsharm.edit.inputs import MAX_WORK_SIZE, check_inputs  # noqa: F401 (the checks every entry point shares)
from zsharm.describe.description import check_prompt_word
from zsharm.errors import ZsharmError

MAX_PROMPT_WORDS = 75  # CLIP reads 77 tokens, two of them the start and end tokens; a word is at least one
MAX_SEED = 2 ** 64 - 1  # what torch.Generator.manual_seed takes
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(?::(\d+))?")


def check_batch_items(items, config, shard=None, out_dir=None) -> None:
    """Refuse a batch, before any model is loaded, when not one of this shard's items still to do can be
    harmonized (no mask, unreadable, or refused by `check_inputs`), when an output would replace an input, or
    when a caption line holds a prompt `check_prompts` refuses; single bad images are reported in the run."""
    from zsharm.batch import ITEM_ERRORS, check_outputs_spare_inputs, is_done, select_shard, shard_from_env
    if out_dir is not None:
        check_outputs_spare_inputs(items, out_dir)
    for item in items:
        for caption in item.captions:
            try:
                check_prompts(caption.source, caption.target)
            except ZsharmError as error:
                raise ZsharmError(f"{item.caption_file}:{item.caption_line} ({item.composite.name}): "
                                  f"{error}") from None
    mine = [item for item in select_shard(items, shard or shard_from_env())
            if out_dir is None or not is_done(out_dir, item.name)]
    first = None
    for item in mine:
        try:
            if item.mask is None:
                raise ZsharmError(f"no mask found for {item.composite.name}")
            check_inputs(item.composite, item.mask, config)
            return
        except ITEM_ERRORS as error:
            first = first or f"{item.name}: {error}"
    if first is not None:
        raise ZsharmError(f"none of the {len(mine)} images to do can be harmonized (first: {first})")


def check_prompts(source, target, tokenizer=None) -> None:
    """Refuse, before any model is loaded, prompts stage 2 cannot use: one without the other, non-English
    letters, more words than the text encoder reads, no shared object word or no condition word; with the
    model's `tokenizer`, also more tokens than it reads (counted without the library's long-input warning)."""
    if source is None and target is None:
        return
    if (source is None) != (target is None):
        raise ZsharmError("give both --source and --target, or neither (then the VLM describes the composite)")
    for label, prompt in (("source", source), ("target", target)):
        words = prompt.lower().split()
        if not words:
            raise ZsharmError(f"the {label} prompt is empty")
        if len(words) > MAX_PROMPT_WORDS:
            raise ZsharmError(f"the {label} prompt has {len(words)} words, but the text encoder reads "
                              f"77 tokens (at most {MAX_PROMPT_WORDS} words); describe in a few words, "
                              f"e.g. \"cat bright\"")
        for word in words:
            check_prompt_word(word, label)
        if tokenizer is not None:
            tokens = len(tokenizer(prompt, verbose=False).input_ids)  # verbose=False: no long-input warning
            if tokens > tokenizer.model_max_length:
                raise ZsharmError(f"the {label} prompt is {tokens} tokens long, but the text encoder reads "
                                  f"{tokenizer.model_max_length}; use fewer or commoner words")
    from zsharm.describe.description import Description
    from zsharm.edit.tokens import condition_vocabulary, split_object
    Description.from_prompts(source, target)
    split_object(source, target, condition_vocabulary())


def check_device(device, dtype=None) -> None:
    """Refuse a device that does not exist here, and fp16 on a CPU, before a model is moved to it."""
    kind, index = None, None
    if device is not None:
        match = _DEVICE.fullmatch(str(device).strip().lower())
        if not match:
            raise ZsharmError(f"--device {device!r}: not a device; use cpu, cuda, cuda:N or mps")
        kind, index = match[1], int(match[2]) if match[2] else 0
        import torch
        if kind == "cuda":
            if not torch.cuda.is_available():
                why = "this torch has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
                raise ZsharmError(f"--device {device}: {why}; use --device cpu, or leave --device out")
            if index >= torch.cuda.device_count():
                raise ZsharmError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) here "
                                  f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        elif kind == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise ZsharmError(f"--device {device}: Apple's MPS is not available here; use --device cpu")
        elif kind == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            raise ZsharmError(f"--device {device}: no Intel XPU is available here; use --device cpu")
    if dtype == "fp16":
        if kind is None:
            from zsharm.models import default_device
            kind = default_device().type
        if kind == "cpu":
            raise ZsharmError("--dtype fp16 needs a GPU: on CPU half precision is slow and unsupported in places; "
                              "use fp32 (the CPU default) or bf16")


def check_edge_weights(config) -> None:
    """The PiDiNet weights of the edge loss are at hand (fetched now if they can be): stage 2 needs them
    after minutes of work, so a missing file and no connection are found first."""
    from zsharm.edit.pidinet import resolve_weights
    if config.edge_pidinet_weight == 0:
        return
    try:
        resolve_weights(None, config.pidinet_variant)
    except ZsharmError as error:
        raise ZsharmError(f"the edge loss needs PiDiNet's weights: {error}; or run without the edge loss "
                          f"(--no-edges)") from None


def check_evaluator_spec(spec) -> None:
    """An evaluator given as a file exists and has a checkpoint's extension (its contents are read later)."""
    spec = str(spec)
    if spec in ("auto", "authors", "random") or spec.startswith("random:"):
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise ZsharmError(f"--evaluator {spec}: no such file (give a checkpoint, 'random', or --no-evaluator)")
    if path.is_dir():
        raise ZsharmError(f"--evaluator {spec} is a folder; give the checkpoint file")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise ZsharmError(f"--evaluator {spec}: unknown checkpoint type {path.suffix!r} (.safetensors or .pth)")
    if not _looks_like_checkpoint(path, suffix):
        raise ZsharmError(f"--evaluator {spec} is not a complete {'safetensors' if suffix == '.safetensors' else 'PyTorch'}"
                          f" checkpoint (damaged, cut short, or another kind of file)")


def _looks_like_checkpoint(path: Path, suffix: str) -> bool:
    """The file's framing is whole: a safetensors JSON header that fits the file, or the zip archive that
    torch.save writes (its central directory is at the end, so a cut-short file fails)."""
    import json
    import struct
    import zipfile
    try:
        if suffix == ".safetensors":
            with open(path, "rb") as file:
                head = file.read(8)
                if len(head) < 8:
                    return False
                (length,) = struct.unpack("<Q", head)
                if length > path.stat().st_size - 8:
                    return False
                json.loads(file.read(length))
            return True
        return zipfile.is_zipfile(path)
    except (OSError, ValueError):
        return False


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


