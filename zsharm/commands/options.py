"""Options shared by several commands, declared once: stage 2's (harmonize, evaluate, figures) and stage 1's
(harmonize, describe).

    add_stage2_options(parser)              # --model --schedule --steps --seed --size --no-edges --transfer ...
    config = config_from_options(args)      # the HarmonizeConfig they describe
    add_vlm_arguments(parser)               # --vlm --base-url --vlm-model ... (stage 1)
    describer = describer_from_args(args)   # the Describer they pick

`zsharm bench` and `zsharm ablate` compare schedules row by row, so their --schedule and --steps mean "which rows";
they keep options of their own.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from zsharm.config import DEFAULT_MODEL, DEFAULT_SCHEDULE, SCHEDULES, HarmonizeConfig
from zsharm.errors import ZsharmError

if TYPE_CHECKING:  # stage 1 loads PIL and the VLM backends: imported when a command uses them, not for --help
    from zsharm.describe.describers import Describer


def add_stage2_options(parser, model_default: str | None = DEFAULT_MODEL, model_help: str | None = None) -> None:
    group = parser.add_argument_group("the diffusion edit (stage 2)")
    group.add_argument("--model", default=model_default,
                       help=model_help or "hub id, diffusers folder, .safetensors/.ckpt file of SD 1.x/2.x, toy (the "
                                          "trained toy prior, offline, with its own describer and evaluator) or tiny "
                                          "(random weights) (default: %(default)s)")
    group.add_argument("--schedule", choices=sorted(SCHEDULES),
                       help=f"paper: the authors' pipeline number for number; fast: the same method, faster "
                            f"(default: {DEFAULT_SCHEDULE})")
    group.add_argument("--config", metavar="FILE",
                       help="the configuration a result records (history.json, summary.json, config.json, or a "
                            "JSON of HarmonizeConfig's fields): rerun with it; options given here override it")
    group.add_argument("--steps", type=int, help="DDIM steps (default: the schedule's, paper 50, fast 20)")
    group.add_argument("--seed", type=int, help="seed of the VAE posterior sample (default: 8888)")
    group.add_argument("--size", type=int, help="long side of the work resolution, a multiple of 64 (default: 512; "
                                                "the toy prior's 128)")
    group.add_argument("--no-edges", action="store_true", help="drop the edge loss from null-text optimisation")
    group.add_argument("--transfer", choices=["guided", "resize"], help="how the change reaches full resolution")
    group.add_argument("--device", help="cuda, cpu, mps (default: the best available)")
    group.add_argument("--dtype", choices=["fp16", "bf16", "fp32"],
                       help="model precision (default: fp32 under the authors' arithmetic, else fp16 on a GPU)")
    group.add_argument("--arithmetic", choices=["auto", "authors", "fast"],
                       help="authors: fp32 and their attention arithmetic, reproducing their numbers; fast: half "
                            "precision and fused attention (default auto: authors for paper on CPU, else fast)")


def config_from_options(args) -> HarmonizeConfig:
    """The configuration the options describe: --config's file, else --schedule's values (default fast), with
    every option given on the command line on top."""
    overrides = {k: v for k, v in dict(steps=args.steps, seed=args.seed, size=args.size, transfer=args.transfer,
                                         dtype=args.dtype, arithmetic=args.arithmetic).items() if v is not None}
    if args.no_edges:
        overrides["use_edges"] = False
    if getattr(args, "config", None):
        if args.schedule is not None:
            raise ZsharmError(f"--schedule {args.schedule} and --config {args.config} each give every value: "
                              f"give one of them (and single options such as --steps on top)")
        saved = read_config_file(args.config)  # it holds what the model asked for when it was made
    else:
        from zsharm.models import model_config
        overrides = {**model_config(getattr(args, "model", None)), **overrides}  # the model's, then the options
    try:
        if getattr(args, "config", None):
            return saved.replace(**overrides)
        return HarmonizeConfig.named(args.schedule or DEFAULT_SCHEDULE, **overrides)
    except ValueError as error:  # HarmonizeConfig's own checks: name the option when they name its field
        text = str(error)
        field = text.split(" ", 1)[0]
        raise ZsharmError(f"--{text}" if field in overrides else text) from None


def read_config_file(path) -> HarmonizeConfig:
    """The configuration in a JSON file: HarmonizeConfig's fields, or a result that records them under "config"
    (history.json, summary.json)."""
    import json
    from pathlib import Path
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZsharmError(f"--config {path}: no such file") from None
    except (OSError, ValueError) as error:
        raise ZsharmError(f"--config {path}: not a readable JSON file ({error})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise ZsharmError(f"--config {path}: holds no configuration (a JSON object of HarmonizeConfig's fields)")
    try:
        return HarmonizeConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise ZsharmError(f"--config {path}: {error}") from None


def add_vlm_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that pick and tune the describer (shared with `zsharm harmonize`)."""
    from zsharm.describe.vlm import DEFAULT_VLM
    group = parser.add_argument_group("descriptions (stage 1)")
    group.add_argument("--vlm", metavar="SPEC",
                       help=f"local VLM: a Hugging Face hub id or a folder (default: {DEFAULT_VLM})")
    group.add_argument("--base-url", metavar="URL", help="an OpenAI-compatible endpoint instead, e.g. "
                       "https://generativelanguage.googleapis.com/v1beta/openai or http://localhost:11434/v1")
    group.add_argument("--vlm-model", metavar="NAME", help="the model name at --base-url")
    group.add_argument("--api-key-env", metavar="VAR", default="ZSHARM_VLM_API_KEY",
                       help="environment variable holding the endpoint's key (default: %(default)s)")
    group.add_argument("--vlm-timeout", metavar="S", type=float, default=60.0,
                       help="seconds to wait for the endpoint (default: %(default)s)")
    group.add_argument("--vlm-device", metavar="DEV", help="device of the local VLM (default: cuda if any, else cpu)")
    group.add_argument("--no-vlm-cache", action="store_true", help="ask the model even if descriptions are cached")


def describer_from_args(args: argparse.Namespace) -> Describer:
    """The describer for parsed `add_vlm_arguments` options (and `--model`'s own describer where the command has
    that option and the model ships one: the toy prior's)."""
    from zsharm.describe.factory import get_describer
    return get_describer(vlm=args.vlm, base_url=args.base_url, vlm_model=args.vlm_model,
                         api_key_env=args.api_key_env, timeout=args.vlm_timeout, device=args.vlm_device,
                         use_cache=not args.no_vlm_cache, model=getattr(args, "model", None))
