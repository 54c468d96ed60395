"""`zsharm bench`: time and memory of one harmonization iteration per schedule (zsharm.repro.speed)."""

import json

from zsharm.errors import ZsharmError
from zsharm.repro.speed import DTYPES, bench, markdown


def register(subparsers):
    p = subparsers.add_parser(
        "bench", help="time one harmonization iteration per schedule, with peak memory and model-call counts",
        description="Time one harmonization iteration per schedule on a synthetic composite: median seconds, "
                    "peak memory and model calls (UNet, VAE, PiDiNet), as a markdown table.")
    p.add_argument("--model", default="tiny",
                   help="tiny, tiny-tamed, sd2-random (SD 2 base architecture, random weights, built offline), "
                        "or any model zsharm harmonize takes")
    p.add_argument("--schedule", default="paper,fast",
                   help="comma list of paper, fast and their -fp32-materialised baselines (fp32, every attention "
                        "map materialised), e.g. paper,fast,paper-fp32-materialised")
    p.add_argument("--size", type=int, default=512, help="side of the square composite, a multiple of 64 (512)")
    p.add_argument("--steps", type=int, help="DDIM steps for every row (default: each schedule's own)")
    p.add_argument("--repeats", type=int, default=3, help="timed iterations per row after one warm-up (3)")
    p.add_argument("--device", help="cuda, cpu, mps (default: the best available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="precision of the non-baseline rows (default: the "
                   "configuration's own: fp32 under the authors' arithmetic, else fp16 on a GPU, fp32 on CPU)")
    p.add_argument("--arithmetic", choices=["auto", "authors", "fast"],
                   help="arithmetic of the non-baseline rows (default auto: paper on CPU runs the authors', "
                        "everything else fp16 on a GPU with fused attention)")
    p.add_argument("--pidinet", choices=["random", "published"], default="random",
                   help="PiDiNet weights: random (same cost, no download) or the published ones")
    p.add_argument("--threads", type=int, help="CPU threads torch may use (default: torch's own choice; 1 gives "
                   "steadier timings on a shared machine)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of markdown")
    p.add_argument("--out", help="also write the markdown table to this file")
    p.add_argument("--in-process", action="store_true",
                   help="run every row in this process (faster start; CPU peak memory is then the process's)")
    p.add_argument("--progress", action="store_true", help="show the per-stage progress bars")
    p.set_defaults(func=cli_bench)


def cli_bench(args) -> int:
    schedules = [s.strip() for s in args.schedule.split(",") if s.strip()]
    if not schedules:
        raise ZsharmError("--schedule is empty; give e.g. paper,fast")
    report = bench(model=args.model, schedules=schedules, size=args.size, steps=args.steps, repeats=args.repeats,
                   device=args.device, dtype=args.dtype, pidinet=args.pidinet, progress=args.progress,
                   threads=args.threads, isolate=not args.in_process, arithmetic=args.arithmetic)
    table = markdown(report)
    print(json.dumps(report, indent=1) if args.json else table)
    if args.out:
        from zsharm.io.files import write_bytes_atomic
        write_bytes_atomic(args.out, table.encode("utf-8"))
    return 0
