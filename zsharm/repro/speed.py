"""How fast one harmonization iteration is, how much memory it takes, and how much model work it does.

    zsharm bench --model sd2-random --schedule paper,fast,paper-fp32-materialised --size 512 --device cuda

Each row runs one schedule (`paper`, `fast`, or either with `-fp32-materialised`: fp32 weights and every
attention map materialised, the authors' arithmetic) on a synthetic composite: one warm-up iteration, then
`--repeats` timed ones; the table gives the median seconds per iteration, the peak memory and the model calls
counted by `zsharm.edit.diffusion.CallCounter`, beside the counts the schedule's formula predicts.

`sd2-random` is Stable Diffusion 2 base's real architecture (configs in `zsharm/assets/sd2_base_config/`) with
random weights, built offline into the zsharm cache, so GPU timings are timings of the real network.
"""

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from zsharm.config import SCHEDULES, HarmonizeConfig
from zsharm.edit.diffusion import CallCounter
from zsharm.errors import ZsharmError

SD2_CONFIG_DIR = Path(__file__).parents[1] / "assets" / "sd2_base_config"
SD2_RANDOM_VERSION = 1          # bump when the build below changes, so cached folders are rebuilt
BASELINE_SUFFIX = "-fp32-materialised"
PROMPTS = ("cat bright", "cat winter dull")
COUNTED = ("unet", "unet_images", "vae_encode", "vae_decode", "pidinet")


# --- counting formulas ---------------------------------------------------------------------------------------

def paper_counts(steps: int = 50, use_edges: bool = True) -> CallCounter:
    """The authors' per-iteration model work (docs/method.md, section 7) for `steps` DDIM steps.

    With n = steps - 1 denoising steps: inversion n UNet calls at batch 2; refinement 2n calls at batch 4 with
    gradients and n without; null-text sum_i min(i//10 + 1, 5) calls at batch 2 with gradients, each followed by
    a VAE decode with gradients and a PiDiNet pass, and n calls at batch 2 without; editing n calls at batch 4.
    For 50 steps: 439 calls, 1,270 image evaluations (682 with gradients), 145 decodes with gradients.
    """
    n = steps - 1
    inner = sum(min(i // 10 + 1, 5) for i in range(n))  # "1 up to 5"
    counts = {
        "inversion/unet/nograd": n, "inversion/unet_images/nograd": 2 * n, "inversion/vae_encode/nograd": 1,
        "refinement/unet/grad": 2 * n, "refinement/unet_images/grad": 8 * n,
        "refinement/unet/nograd": n, "refinement/unet_images/nograd": 4 * n,
        "nulltext/unet/grad": inner, "nulltext/unet_images/grad": 2 * inner,
        "nulltext/unet/nograd": n, "nulltext/unet_images/nograd": 2 * n,
        "nulltext/vae_decode/nograd": 1,  # the reconstruction shown to the user
        "editing/unet/nograd": n, "editing/unet_images/nograd": 4 * n, "editing/vae_decode/nograd": 1,
    }
    if use_edges:
        counts["nulltext/vae_decode/grad"] = inner
        # + the input's edge map, once; the authors run PiDiNet without gradients
        counts["nulltext/pidinet/nograd"] = inner + 1
    return CallCounter.from_table(counts)


def schedule_counts(config: HarmonizeConfig) -> CallCounter:
    """The model work one iteration under `config` does, from its switches.

    Exact except with `nulltext_early_stop` > 0 and more than one inner step allowed, where the null-text
    figures are an upper bound (an early stop saves calls)."""
    n = config.steps - 1
    counts = {}

    def add(key, value):
        if value:
            counts[key] = counts.get(key, 0) + value

    inversion_rows = 1 if config.inversion_batch_uncond_only and config.inversion_guidance == 0 else 2
    add("inversion/unet/nograd", n)
    add("inversion/unet_images/nograd", inversion_rows * n)
    add("inversion/vae_encode/nograd", 1)
    if config.refine:
        rows = 2 if config.refine_cond_only else 4
        add("refinement/unet/grad", config.refine_iters * n)
        add("refinement/unet_images/grad", rows * config.refine_iters * n)
        if not config.refine_cond_only:  # the guidance-0 trajectory is taken from the inversion instead
            add("refinement/unet/nograd", n)
            add("refinement/unet_images/nograd", 4 * n)
    inner = sum(config.nulltext_inner_steps(i) for i in range(n))
    add("nulltext/unet/grad", inner)
    add("nulltext/unet_images/grad", 2 * inner)
    add("nulltext/unet/nograd", n)
    add("nulltext/unet_images/nograd", 2 * n)
    add("nulltext/vae_decode/nograd", 1)
    if config.use_edges:
        add("nulltext/vae_decode/grad", inner)
        add("nulltext/pidinet/nograd", 1)
        add("nulltext/pidinet/grad" if config.pidinet_grad else "nulltext/pidinet/nograd", inner)
    add("editing/unet/nograd", n)
    add("editing/unet_images/nograd", 4 * n)
    add("editing/vae_decode/nograd", 1)
    return CallCounter.from_table(counts)


def model_counts(counts: CallCounter) -> CallCounter:
    """The UNet, VAE and PiDiNet entries of a count (text-encoder calls left out)."""
    return counts.only(COUNTED)


def summarise(counts: CallCounter) -> dict:
    """Totals: UNet calls, UNet image evaluations (all / with gradients), VAE encodes, VAE decodes (all / with
    gradients), PiDiNet passes."""
    total = counts.total
    return dict(unet_calls=total("unet"), unet_images=total("unet_images"),
                unet_images_grad=total("unet_images", grad=True), vae_encodes=total("vae_encode"),
                vae_decodes=total("vae_decode"), vae_decodes_grad=total("vae_decode", grad=True),
                pidinet=total("pidinet"))


# --- the random-weight SD 2 base -----------------------------------------------------------------------------

def sd2_configs() -> dict:
    """The committed SD 2 base component configs: {"unet", "vae", "text_encoder", "scheduler"} -> dict."""
    files = dict(unet="unet/config.json", vae="vae/config.json", text_encoder="text_encoder/config.json",
                 scheduler="scheduler/scheduler_config.json")
    return {name: json.loads((SD2_CONFIG_DIR / path).read_text()) for name, path in files.items()}


def sd2_random_dir() -> Path:
    """Build (once) and return the cache folder of the random-weight SD 2 base pipeline."""
    from zsharm.cache import cache_dir
    from zsharm.model_folders import built_once
    return built_once(cache_dir("models") / f"sd2-random-v{SD2_RANDOM_VERSION}", build_sd2_random_pipeline)


def build_sd2_random_pipeline(out_dir, seed: int = 0, unet_out_scale: float = 1e-3) -> Path:
    """Write Stable Diffusion 2 base's architecture with seeded random weights (fp16 safetensors, 2.6 GB) to
    `out_dir`, one component at a time (peak ~4 GB of RAM).

    A random UNet predicts noise of unit size whatever its input, which makes DDIM inversion run away (and
    fp16 overflow); scaling its output layer by `unet_out_scale` keeps every latent finite. Timings and memory
    do not depend on the weights' values.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from zsharm.model_folders import clip_tokenizer_files

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    cfg = sd2_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scheduler = DDIMScheduler.from_config(cfg["scheduler"])
        tok_dir = clip_tokenizer_files(tmp / "_bpe")
        tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), pad_token="!",
                                  model_max_length=77)
        text = {k: v for k, v in cfg["text_encoder"].items() if k != "architectures"}
        parts = dict(
            unet=lambda: UNet2DConditionModel.from_config(cfg["unet"]),
            vae=lambda: AutoencoderKL.from_config(cfg["vae"]),
            text_encoder=lambda: CLIPTextModel(CLIPTextConfig(**text)))
        for name, build in parts.items():  # one at a time: fp32 construction of all three needs 5 GB
            model = build()
            if name == "unet":
                with torch.no_grad():
                    model.conv_out.weight.mul_(unet_out_scale)
                    model.conv_out.bias.mul_(unet_out_scale)
            model.half().save_pretrained(str(tmp / name), safe_serialization=True)
            del model
    (tmp / "model_index.json").write_text((SD2_CONFIG_DIR / "model_index.json").read_text())
    scheduler.save_pretrained(str(tmp / "scheduler"))
    tokenizer.save_pretrained(str(tmp / "tokenizer"))
    from zsharm.model_folders import publish_model_folder
    return publish_model_folder(tmp, tok_dir, out_dir)


def resolve_model(spec: str) -> str:
    """A model spec for `zsharm.models.load_pipeline`, with the random-weight names built into cache folders
    first (so rows running in their own processes only load)."""
    from zsharm.models import TINY_SPECS, tiny_pipeline_dir
    if spec == "sd2-random":
        return str(sd2_random_dir())
    if spec in TINY_SPECS:
        return str(tiny_pipeline_dir(spec))
    return spec


# --- one row of the table ------------------------------------------------------------------------------------

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def row_config(name: str, steps: int = None, size: int = 512, arithmetic: str = None) -> tuple:
    """(HarmonizeConfig, materialised) for a row name: a schedule, or a schedule + "-fp32-materialised" (the
    authors' arithmetic). `arithmetic` overrides the schedule's own for the non-baseline rows."""
    schedule, materialised = name, False
    if name.endswith(BASELINE_SUFFIX):
        schedule, materialised = name[: -len(BASELINE_SUFFIX)], True
    if schedule not in SCHEDULES:
        choices = ", ".join(sorted(SCHEDULES) + [s + BASELINE_SUFFIX for s in sorted(SCHEDULES)])
        raise ZsharmError(f"unknown schedule {name!r}; choose from {choices}")
    overrides = dict(size=size) if steps is None else dict(size=size, steps=steps)
    if arithmetic and not materialised:
        overrides["arithmetic"] = arithmetic
    try:
        config = HarmonizeConfig.named(schedule, **overrides)
    except ValueError as exc:
        raise ZsharmError(str(exc)) from exc
    if materialised:
        config = config.replace(arithmetic="authors", dtype="fp32")
    return config, materialised


def row_dtype(config: HarmonizeConfig, materialised: bool, device, override: str = None) -> str:
    """The precision a row runs in: fp32 for a materialised baseline, else --dtype, else what the configuration
    asks for on `device` (`HarmonizeConfig.torch_dtype`: fp32 under the authors' arithmetic, fp16 on a GPU)."""
    if materialised:
        return "fp32"
    if override:
        return override
    from zsharm.models import default_dtype
    dtype = config.torch_dtype(torch.device(device)) or default_dtype(torch.device(device))
    return {v: k for k, v in DTYPES.items()}[dtype]


def attention_label(config: HarmonizeConfig, materialised: bool, device) -> str:
    """How the row's attention is computed: every map materialised (the authors' arithmetic), or fused (SDPA)
    wherever no map is needed."""
    if materialised or config.runs_authors_arithmetic(torch.device(device)):
        return "all maps"
    return "fused" if config.fused_attention else "maps in P2P"


def synthetic_composite(size: int, seed: int = 0) -> tuple:
    """A size x size uint8 RGB composite (smooth background, a warm-tinted ellipse pasted on it) and its mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([0.35 + 0.3 * x, 0.45 + 0.25 * y, 0.65 - 0.3 * x * y], -1)
    image += 0.02 * rng.standard_normal(image.shape)
    mask = ((x - 0.5) / 0.22) ** 2 + ((y - 0.55) / 0.3) ** 2 <= 1
    image[mask] = image[mask] * [1.3, 0.85, 0.6] + 0.08
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask


def device_name(device, threads: int = None) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores, {threads or torch.get_num_threads()} torch thread(s)"


def _peak_rss_bytes() -> int:
    import resource  # POSIX only: imported here so that importing this module works on Windows
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _materialise_all_attention(pipe):
    """The authors' arithmetic: every attention layer computes softmax(QK^T) as a tensor, none is fused."""
    from diffusers.models.attention_processor import AttnProcessor
    pipe.unet.set_attn_processor(AttnProcessor())
    pipe.vae.set_attn_processor(AttnProcessor())
    if hasattr(pipe.text_encoder, "set_attn_implementation"):
        pipe.text_encoder.set_attn_implementation("eager")


def measure_row(model: str, name: str, size: int = 512, steps: int = None, repeats: int = 3, device: str = None,
                dtype: str = None, pidinet: str = "random", progress: bool = False, threads: int = None,
                isolated: bool = False, arithmetic: str = None) -> dict:
    """Time one row in this process: load `model`, one warm-up iteration, then `repeats` timed ones.

    Returns a dict: name, schedule, steps, dtype, attention, seconds (each timed iteration), seconds_median,
    stage_seconds (median per stage), peak_memory_bytes, memory (what was measured), counts (CallCounter
    table), summary (summarise(counts)), formula (schedule_counts), formula_match ("=", "<=" or "!=")."""
    from zsharm.edit.iteration import run_iteration
    from zsharm.models import default_device, load_pipeline

    device = torch.device(device) if device else default_device()
    config, materialised = row_config(name, steps, size, arithmetic)
    dtype_name = row_dtype(config, materialised, device, dtype)
    pipe = load_pipeline(model, device=device, dtype=DTYPES[dtype_name])
    if materialised:
        _materialise_all_attention(pipe)
    if pidinet == "published":
        from zsharm.edit.pidinet import load_pidinet
        detector = load_pidinet(variant=config.pidinet_variant, device=device)
    else:
        from zsharm.edit.pidinet import random_pidinet
        detector = random_pidinet(config.pidinet_variant).to(device)
    image, mask = synthetic_composite(size)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds, stages, counts = [], [], None
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for i in range(1 + repeats):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            result = run_iteration(pipe, image, mask, *PROMPTS, config, progress=progress, pidinet=detector)
            if cuda:
                torch.cuda.synchronize(device)
            if i:  # the first run warms up kernels, allocators and caches
                seconds.append(time.perf_counter() - start)
                stages.append(result.seconds)
            if counts is not None and counts != result.counts:
                raise RuntimeError(f"{name}: model calls differ between iterations")
            counts = result.counts
    finally:
        torch.set_num_threads(threads_before)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        memory = "torch.cuda.max_memory_allocated (weights + work)"
    else:
        peak = _peak_rss_bytes()
        memory = ("peak RSS of the row's own process (libraries, weights and work)" if isolated else
                  "peak RSS of the whole bench process so far (rows not separated)")
    formula = schedule_counts(config)
    measured = model_counts(counts)
    if measured == formula:
        match = "="
    elif measured <= formula:
        match = "<="
    else:
        match = "!="
    return dict(name=name, schedule=config.schedule, steps=config.steps, dtype=dtype_name,
                attention=attention_label(config, materialised, device), seconds=seconds,
                seconds_median=statistics.median(seconds),
                stage_seconds={k: statistics.median(s[k] for s in stages) for k in stages[0]},
                peak_memory_bytes=peak, memory=memory, counts=counts.table(), summary=summarise(counts),
                formula=formula.table(), formula_match=match, config=config.to_dict())


def _measure_row_isolated(kwargs: dict) -> dict:
    """measure_row in a fresh Python process (`python -m zsharm.repro.speed KWARGS OUT`), so that the row's peak
    memory is its own and nothing is shared with earlier rows. The child's stderr is the caller's."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory(prefix="zsharm-bench-") as tmp:
        out = Path(tmp, "row.json")
        proc = subprocess.run([sys.executable, "-m", "zsharm.repro.speed", json.dumps(kwargs), str(out)],
                              stdout=subprocess.DEVNULL)
        answer = json.loads(out.read_text()) if out.is_file() else None
    if answer is not None and "error" in answer:
        raise ZsharmError(answer["error"])
    if proc.returncode != 0 or answer is None:
        raise RuntimeError(f"bench row {kwargs['name']!r} failed in its own process (exit {proc.returncode}); "
                           "its traceback is above")
    return answer


def _row_main(argv) -> int:
    kwargs, out = json.loads(argv[0]), Path(argv[1])
    try:
        answer = measure_row(**kwargs, isolated=True)
    except ZsharmError as exc:
        answer = dict(error=str(exc))
    out.write_text(json.dumps(answer))
    return 0


# --- the whole benchmark -------------------------------------------------------------------------------------

def bench(model: str = "tiny", schedules=("paper", "fast"), size: int = 512, steps: int = None, repeats: int = 3,
          device: str = None, dtype: str = None, pidinet: str = "random", progress: bool = False,
          threads: int = None, isolate: bool = True, arithmetic: str = None) -> dict:
    """Run `measure_row` for each schedule (each in a fresh process when `isolate`, so peak memory is the
    row's own) and return the report: header facts and one dict per row."""
    from zsharm.models import default_device
    if repeats < 1:
        raise ZsharmError(f"--repeats must be at least 1, got {repeats}")
    if threads is not None and threads < 1:
        raise ZsharmError(f"--threads must be at least 1, got {threads}")
    device = torch.device(device) if device else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ZsharmError("--device cuda: CUDA is not available on this machine")
    if dtype is not None and dtype not in DTYPES:
        raise ZsharmError(f"unknown dtype {dtype!r}; choose fp16, bf16 or fp32")
    for name in schedules:
        row_config(name, steps, size, arithmetic)  # fail on a bad name or size before any model is built
    spec = resolve_model(model)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    for name in schedules:
        kwargs = dict(model=spec, name=name, size=size, steps=steps, repeats=repeats, device=str(device),
                      dtype=dtype, pidinet=pidinet, progress=progress, threads=threads, arithmetic=arithmetic)
        rows.append(_measure_row_isolated(kwargs) if isolate else measure_row(**kwargs))
    reference = next((r for r in rows if r["name"] == "paper" + BASELINE_SUFFIX),
                     next((r for r in rows if r["name"].endswith(BASELINE_SUFFIX)), None))
    for row in rows:
        row["speedup_vs"] = reference["name"] if reference else None
        row["speedup"] = reference["seconds_median"] / row["seconds_median"] if reference else None
    import diffusers

    from zsharm import __version__
    return dict(model=model, device=device_name(device, threads), device_type=device.type, threads=threads,
                size=size, repeats=repeats,
                pidinet=pidinet, isolated=isolate, prompts=list(PROMPTS),
                versions=dict(zsharm=__version__, torch=torch.__version__, diffusers=diffusers.__version__,
                              python=platform.python_version()),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                load_average=None if load_before is None else [load_before, os.getloadavg()[0]], rows=rows)


def _bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def markdown(report: dict) -> str:
    """The report as a markdown section: what ran where, then one table row per schedule."""
    rows = report["rows"]
    reference = rows[0]["speedup_vs"] if rows else None
    lines = [
        f"### zsharm bench: `{report['model']}` at {report['size']}x{report['size']} on {report['device']}",
        "",
        f"{report['date']}; zsharm {report['versions']['zsharm']}, torch {report['versions']['torch']}, "
        f"diffusers {report['versions']['diffusers']}; median of {report['repeats']} timed iteration(s) after one "
        f"warm-up; prompts {report['prompts'][0]!r} -> {report['prompts'][1]!r}; {report['pidinet']} PiDiNet-tiny.",
        f"Peak memory: {rows[0]['memory'] if rows else '-'}."
        + (f" Machine load (1-minute average) before / after: {report['load_average'][0]:.1f} / "
           f"{report['load_average'][1]:.1f}." if report.get("load_average") and report["device_type"] == "cpu"
           else ""),
        "",
        "| schedule | steps | dtype | attention | s / iteration | " + (f"x vs {reference} | " if reference else "")
        + "inversion / refinement / null-text / editing (s) | peak memory | UNet calls | UNet images (grad) "
        "| VAE enc | VAE dec (grad) | PiDiNet | counts vs formula |",
        "|---" * (13 + bool(reference)) + "|",
    ]
    for r in rows:
        st, s = r["stage_seconds"], r["summary"]
        stages = " / ".join(f"{st.get(k, 0.0):.2f}" for k in ("inversion", "refinement", "nulltext", "editing"))
        speed = f"{r['speedup']:.1f} | " if reference else ""
        lines.append(
            f"| {r['name']} | {r['steps']} | {r['dtype']} | {r['attention']} | {r['seconds_median']:.2f} | {speed}"
            f"{stages} | {_bytes(r['peak_memory_bytes'])} | {s['unet_calls']} | {s['unet_images']} "
            f"({s['unet_images_grad']}) | {s['vae_encodes']} | {s['vae_decodes']} ({s['vae_decodes_grad']}) | "
            f"{s['pidinet']} | {r['formula_match']} |")
    lines += ["", "attention: `all maps` = every UNet attention map materialised as a tensor (the authors' "
              "arithmetic; the `-fp32-materialised` baselines also materialise the VAE's and the text encoder's); "
              "`fused` = fused attention (SDPA) wherever no map is needed, refinement's image/32 maps still "
              "materialised. UNet images = batch rows evaluated. counts vs formula: `=` the counted calls equal "
              "`zsharm.repro.speed.schedule_counts` for the row's configuration.", ""]
    if rows and all("config" in r for r in rows):  # every value each row ran with: HarmonizeConfig.from_dict
        configs = {r["name"]: r["config"] for r in rows}
        lines += ["<details><summary>configurations</summary>", "", "```json", json.dumps(configs, indent=1),
                  "```", "", "</details>", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # one bench row in its own process (see _measure_row_isolated)
    sys.exit(_row_main(sys.argv[1:]))
