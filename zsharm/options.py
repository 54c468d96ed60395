"""The stage-2 options of the commands that run the method (harmonize, evaluate, figures), declared once.

    add_stage2_options(parser)              # --model --schedule --steps --seed --size --no-edges --transfer ...
    config = config_from_options(args)      # the HarmonizeConfig they describe

`zsharm bench` and `zsharm ablate` compare schedules row by row, so their --schedule and --steps mean "which rows";
they keep options of their own.
"""

from zsharm.config import DEFAULT_SCHEDULE, SCHEDULES, HarmonizeConfig
from zsharm.errors import ZsharmError

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-base"


def add_stage2_options(parser, model_default: str | None = DEFAULT_MODEL, model_help: str | None = None) -> None:
    group = parser.add_argument_group("the diffusion edit (stage 2)")
    group.add_argument("--model", default=model_default,
                       help=model_help or "hub id, diffusers folder, .safetensors/.ckpt file of SD 1.x/2.x, or tiny "
                                          "(default: %(default)s)")
    group.add_argument("--schedule", default=DEFAULT_SCHEDULE, choices=sorted(SCHEDULES),
                       help=f"paper: the authors' pipeline number for number; fast: the same method, faster "
                            f"(default: {DEFAULT_SCHEDULE})")
    group.add_argument("--steps", type=int, help="DDIM steps (default: the schedule's, paper 50, fast 20)")
    group.add_argument("--seed", type=int, help="seed of the VAE posterior sample (default: 8888)")
    group.add_argument("--size", type=int, help="long side of the work resolution, a multiple of 64 (default: 512)")
    group.add_argument("--no-edges", action="store_true", help="drop the edge loss from null-text optimisation")
    group.add_argument("--transfer", choices=["guided", "resize"], help="how the change reaches full resolution")
    group.add_argument("--device", help="cuda, cpu, mps (default: the best available)")
    group.add_argument("--dtype", choices=["fp16", "bf16", "fp32"],
                       help="model precision (default: fp32 under the authors' arithmetic, else fp16 on a GPU)")
    group.add_argument("--arithmetic", choices=["auto", "authors", "fast"],
                       help="authors: fp32 and their attention arithmetic, reproducing their numbers; fast: half "
                            "precision and fused attention (default auto: authors for paper on CPU, else fast)")


def config_from_options(args) -> HarmonizeConfig:
    overrides = {k: v for k, v in dict(steps=args.steps, seed=args.seed, size=args.size, transfer=args.transfer,
                                         dtype=args.dtype, arithmetic=args.arithmetic).items() if v is not None}
    if args.no_edges:
        overrides["use_edges"] = False
    try:
        return HarmonizeConfig.named(args.schedule, **overrides)
    except ValueError as error:  # HarmonizeConfig's own checks: name the option when they name its field
        text = str(error)
        field = text.split(" ", 1)[0]
        raise ZsharmError(f"--{text}" if field in overrides else text) from None
