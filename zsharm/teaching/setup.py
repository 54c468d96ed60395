"""What every notebook needs first, as one call:

    course = setup(MODEL, DEVICE, quick=QUICK, full=FULL)
    course.pipe, course.config(), course.image, course.mask, course.source, course.target, course.data

`setup` finds the checkout, silences the libraries' warnings, puts a tiny model on one torch thread, says what
a random model can and cannot show, and picks the settings: `quick` (the tests' run on a tiny model), the
course size (the default: the paper's 50 steps at 512 px, but fewer gamma values, a loop budget of 3 and a
4-image evaluation), or `full` (the paper's settings everywhere). The model is loaded on first use of
`course.pipe`, so notebooks that need none load none.

It also holds the course's cost arithmetic (`gpu_cost`): what a notebook's counted UNet evaluations and VAE
decodes take on a T4 or an A100, from one stated assumption.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from zsharm.errors import ZsharmError, one_line
from zsharm.models import TINY_SPECS, hide_loading_bars, tiny_pipeline_dir
from zsharm.quiet import quiet_libraries

DEMO_SOURCE = "astronaut bright warm indoor"
DEMO_TARGET = "astronaut dim blue twilight"


# ----------------------------------------------------------------------------- where things are

def repo_root(start=None) -> Path:
    """The checkout's root: the first folder at or above `start` (default: the working folder) holding
    pyproject.toml. Notebooks find `data/` through it, wherever they are run from."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "zsharm").is_dir():
            return folder
    raise ZsharmError(f"no zsharm checkout (a folder with pyproject.toml) at or above {here}")


def is_tiny(model: str) -> bool:
    """Whether a model spec names one of the tiny random-weight test models."""
    return str(model) in TINY_SPECS


TINY_NOTE = ("The tiny model is random: shapes and code paths, not pictures, are what to look at here. "
             "Set ZSHARM_MODEL to toy (offline, CPU) or stabilityai/stable-diffusion-2-base (a GPU helps) to see "
             "the method work.")


def toy_note() -> str:
    """What the toy prior is, in one line (with its training time from its zsharm.json)."""
    import json

    from zsharm.models import model_folder
    info = json.loads((model_folder("toy") / "zsharm.json").read_text())
    minutes = sum(info.get("training_minutes", {}).values())
    return (f"Model: zsharm's toy prior, a small Stable-Diffusion-shaped model whose networks trained for "
            f"{minutes:.0f} minutes (the parts' times added up) on two CPU cores on synthetic shapes "
            f"(zsharm/toy/world.py), not SD 2. Its pictures are 128 px toy "
            f"scenes; what it shows is how the method behaves on a prior that knows its world.")


def course_model(model: str = "auto") -> str:
    """The model a notebook runs: `model` as given, or for "auto" Stable Diffusion 2 base where it can be had and
    run (a GPU, and its weights cached or a connection), else the toy prior (offline, CPU)."""
    if str(model) != "auto":
        return str(model)
    import torch

    from zsharm.config import DEFAULT_MODEL
    if not torch.cuda.is_available():
        return "toy"
    return DEFAULT_MODEL if _can_be_had(DEFAULT_MODEL, "model_index.json") else "toy"


def _can_be_had(repo: str, file: str) -> bool:
    """Whether hub repository `repo` can be loaded here: downloads allowed, or `file` of it already cached."""
    from huggingface_hub import try_to_load_from_cache

    from zsharm.cache import offline
    return not offline() or isinstance(try_to_load_from_cache(repo, file), str)


def course_vlm(vlm: str = "auto", tiny: bool = False) -> str:
    """The VLM notebook 01 asks: `vlm` as given, or for "auto" SmolVLM-Instruct where it can be had (a
    connection, or its weights cached), else the tiny random VLM (offline: the mechanism, not the answers),
    which `tiny` (the tests' quick run, a tiny diffusion model) asks for always."""
    if str(vlm) != "auto":
        return str(vlm)
    if tiny:
        return "tiny"
    from zsharm.describe.vlm import DEFAULT_VLM
    return DEFAULT_VLM if _can_be_had(DEFAULT_VLM, "config.json") else "tiny"


def load_tokenizer(model: str):
    """The CLIP tokenizer of a model spec (hub id, diffusers folder, toy, tiny or auto) without loading weights."""
    from transformers import CLIPTokenizer

    from zsharm.models import model_folder
    model = course_model(model)
    folder = model_folder(model)
    source = str(tiny_pipeline_dir(model)) if model in TINY_SPECS else str(folder or model)
    try:
        return CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
    except OSError as exc:
        raise ZsharmError(f"no tokenizer for model {model!r}: {one_line(exc)}") from exc


# ----------------------------------------------------------------------------- settings

# name: (quick, course size, full); quick is the tests' tiny run, full the paper's settings
SETTINGS = {
    "steps": (4, 50, 50),
    "size": (128, 512, 512),
    "gammas": ([0.0, 0.1, 10.0], [0.0, 0.1, 10.0], [0.0, 0.1, 1.0, 10.0, 100.0]),
    "loop_budget": (3, 3, 10),
    "eval_images": (2, 4, None),        # None: every composite of the benchmark
}


def settings(quick: bool = False, full: bool = False) -> dict:
    """The course's settings: quick (tiny test runs), the course size (default) or the paper's (`full`)."""
    if quick and full:
        raise ZsharmError("quick and full exclude each other: quick is the tests' tiny run, full the paper's")
    column = 0 if quick else 2 if full else 1
    return {name: values[column] for name, values in SETTINGS.items()}


def enable_colab_widgets():
    """Colab renders ipywidgets 8 only through its custom widget manager; elsewhere this does nothing."""
    if "google.colab" in sys.modules:
        from google.colab import output  # noqa: the module exists on Colab only
        output.enable_custom_widget_manager()


@dataclass
class Course:
    """A notebook's set-up: the model spec, the device, the paths, the settings and the demo inputs."""
    model: str
    device: object
    quick: bool
    full: bool
    root: Path
    steps: int
    size: int
    gammas: list
    loop_budget: int
    eval_images: object
    image: object = None                       # the demo composite, 8-bit RGB PIL
    mask: object = None                        # its boolean mask
    source: str = DEMO_SOURCE
    target: str = DEMO_TARGET
    _pipe: object = field(default=None, repr=False)

    @property
    def tiny(self) -> bool:
        return is_tiny(self.model)

    @property
    def toy(self) -> bool:
        return self.model == "toy"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pipe(self):
        """The diffusion pipeline, loaded on first use."""
        if self._pipe is None:
            from zsharm.models import load_pipeline
            self._pipe = load_pipeline(self.model, device=self.device)
        return self._pipe

    def caption(self, text: str) -> str:
        """A figure title that never passes a tiny-model picture off as a result."""
        if self.tiny:
            return f"{text}\n(tiny random model: code paths, not a result)"
        return f"{text}\n(toy prior trained on synthetic shapes, not SD 2)" if self.toy else text

    def config(self, **overrides):
        """The paper's configuration at this course's steps and size, with the values the model asks for (the
        toy prior's attention resolution and edge loss) and `overrides`."""
        from zsharm.config import HarmonizeConfig
        from zsharm.models import model_config
        return HarmonizeConfig.paper(**{**model_config(self.model), "steps": self.steps, "size": self.size,
                                        **overrides})

    @property
    def attention_divisor(self) -> int:
        """The divisor of the maps the method reads (image/32 on SD 2 at 512 px, image/8 on the toy's 128 px)."""
        return self.config().attention_res_divisor

    @property
    def attention_divisors(self) -> tuple:
        """Two map resolutions to record: the method's and the next finer one the UNet has (SD 2: image/32 and
        image/16; the toy prior, whose finest maps are the method's: image/8 and the coarser image/16)."""
        d = self.attention_divisor
        return (d, d // 2) if d // 2 >= 8 else (d, d * 2)


def setup(model: str, device=None, quick: bool = False, full: bool = False, steps: int = None, size: int = None,
          dpi: int = 90) -> Course:
    """Everything a notebook needs first (see the module docstring). `steps` and `size` override the settings'."""
    quiet_libraries()
    # the libraries' loading bars would stay in a saved notebook as frozen "0%" lines (zsharm.bars: ours vanish)
    hide_loading_bars()
    enable_colab_widgets()
    import matplotlib.pyplot as plt
    import torch

    from zsharm.io.masks import load_mask
    from zsharm.io.pictures import load_image

    model = course_model(model)
    if is_tiny(model) or model == "toy":
        # a small model is thousands of small ops: one thread is several times faster than two on busy cores
        torch.set_num_threads(1)
        print(TINY_NOTE if is_tiny(model) else toy_note())
    plt.rcParams["figure.dpi"] = dpi
    chosen = settings(quick, full)
    root = repo_root()
    source, target = DEMO_SOURCE, DEMO_TARGET
    if model == "toy":  # the toy prior knows only its own world: a held-out toy composite, at its 128 px
        from zsharm.models import model_config
        folder = root / "data" / "toy"
        name = TOY_DEMO
        image = load_image(folder / "composite_images" / f"{name}_1_1.png").to_pil_rgb8()
        mask = load_mask(folder / "masks" / f"{name}_1.png", size=image.size)
        source, target = toy_descriptions(folder, f"{name}_1_1.png")
        size = size or model_config("toy")["size"]
    else:
        image = load_image(root / "data" / "demo" / "composite.png").to_pil_rgb8()
        mask = load_mask(root / "data" / "demo" / "mask.png", size=image.size)
    return Course(model=str(model), device=device, quick=quick, full=full, root=root,
                  steps=steps or chosen["steps"], size=size or chosen["size"], gammas=chosen["gammas"],
                  loop_budget=chosen["loop_budget"], eval_images=chosen["eval_images"], image=image, mask=mask,
                  source=source, target=target)


TOY_DEMO = "t1000000"  # data/toy's first composite


def toy_descriptions(folder: Path, name: str) -> tuple[str, str]:
    """The true (source, target) of a data/toy composite, from its captions.txt."""
    for line in (folder / "captions.txt").read_text().splitlines():
        file, _, caption = line.partition("\t")
        if file == name:
            source, target = caption.split(";")[0].split(",")
            return source, target
    raise ZsharmError(f"{folder}/captions.txt has no line for {name}")


# ----------------------------------------------------------------------------- what a notebook costs on a GPU

# The one assumption: a GPU sustains 10% of its dense fp16 tensor-core peak on SD 2 base at batch <= 4
# (attention and memory traffic, not matrix products, bound small batches). Peaks from the vendors' sheets.
GPU_FP16_TFLOPS = {"T4": 65.0, "A100": 312.0}
SUSTAINED_FRACTION = 0.10
# Work per image row at 512 px (64x64 latent), counted from SD 2 base's modules: UNet forward about 0.8 TFLOP,
# VAE decode about 1.2 TFLOP; a backward pass costs about twice its forward.
UNET_TFLOP_512 = 0.8
VAE_DECODE_TFLOP_512 = 1.2
BACKWARD_FACTOR = 2.0


def seconds_per(what: str, gpu: str, size: int = 512) -> float:
    """Estimated seconds of one UNet image evaluation (`unet`) or one VAE decode (`vae`) at `size` px."""
    tflop = {"unet": UNET_TFLOP_512, "vae": VAE_DECODE_TFLOP_512}[what] * (size / 512) ** 2
    return tflop / (GPU_FP16_TFLOPS[gpu] * SUSTAINED_FRACTION)


def gpu_cost(unet_images: int, vae_decodes: int, unet_images_grad: int = 0, vae_decodes_grad: int = 0,
             size: int = 512) -> dict:
    """Estimated seconds on a T4 and an A100 for counted work: UNet image evaluations (batch rows) and VAE
    decodes, the ones with gradients among them. An estimate from the assumption above, not a measurement."""
    out = {}
    for gpu in GPU_FP16_TFLOPS:
        unet, vae = seconds_per("unet", gpu, size), seconds_per("vae", gpu, size)
        out[gpu] = (unet * (unet_images + BACKWARD_FACTOR * unet_images_grad)
                    + vae * (vae_decodes + BACKWARD_FACTOR * vae_decodes_grad))
    return out


def cost_note(unet_images: int, vae_decodes: int, unet_images_grad: int = 0, vae_decodes_grad: int = 0,
              size: int = 512) -> str:
    """One line with the arithmetic of `gpu_cost`, for a notebook's header."""
    cost = gpu_cost(unet_images, vae_decodes, unet_images_grad, vae_decodes_grad, size)
    parts = [f"{gpu} ~{seconds / 60:.1f} min" if seconds >= 90 else f"{gpu} ~{seconds:.0f} s"
             for gpu, seconds in cost.items()]
    return (f"estimate: {unet_images} UNet evaluations ({unet_images_grad} with gradients) and {vae_decodes} VAE "
            f"decodes ({vae_decodes_grad} with gradients) at {size} px -> " + ", ".join(parts))


# iterations of the paper's stage 2 at 50 steps (zsharm.repro.speed.paper_counts): 1,270 UNet evaluations
# (682 with gradients) and 147 VAE decodes (145 with gradients) each
PAPER_ITERATION = dict(unet_images=1270, unet_images_grad=682, vae_decodes=147, vae_decodes_grad=145)
DOWNLOADS = {
    "sd2": "Stable Diffusion 2 base, about 5.2 GB once (UNet 3.5 GB, text encoder 1.4 GB, VAE 0.3 GB)",
    "pidinet": "PiDiNet-tiny's published weights, 0.4 MB",
    "vlm": "SmolVLM-Instruct, about 4.5 GB once (stage 1)",
    "figures": "the authors' result figures, a few MB (optional; skipped offline)",
}
MEMORY = {
    "none": "no GPU needed",
    "inference": "about 4 GB of GPU memory (fp16 weights 2.6 GB, no gradients)",
    "paper": "about 12 GB of GPU memory (estimate: fp16 weights and the activations of the gradient steps; "
             "benchmarks/README.md), so a 16 GB T4 is enough",
}


SHORT_DOWNLOADS = {"sd2": "Stable Diffusion 2 base (5.2 GB, once)", "pidinet": "PiDiNet (0.4 MB)",
                   "vlm": "SmolVLM (4.5 GB, once)", "figures": "the authors' figures (a few MB, optional)"}
SHORT_MEMORY = {"none": "no GPU", "inference": "about 4 GB of GPU memory", "paper": "about 12 GB of GPU memory"}


def _work(iterations: float = 0, unet_images: int = 0, unet_images_grad: int = 0, vae_decodes: int = 0,
          vae_decodes_grad: int = 0) -> dict:
    work = {k: round(iterations * v) for k, v in PAPER_ITERATION.items()}
    for key, extra in (("unet_images", unet_images), ("unet_images_grad", unet_images_grad),
                       ("vae_decodes", vae_decodes), ("vae_decodes_grad", vae_decodes_grad)):
        work[key] += extra
    return work


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def cost_markdown(iterations: float = 0, unet_images: int = 0, unet_images_grad: int = 0, vae_decodes: int = 0,
                  vae_decodes_grad: int = 0, memory: str = "paper", downloads=("sd2", "pidinet"), note: str = "") -> str:
    """The one-line cost at the top of a notebook (scripts/build_notebooks.py writes it from the source's
    `# %% cost {...}` line): time on a T4 and an A100 by `gpu_cost`'s assumption, peak memory, downloads. The
    arithmetic and `note` go to docs/costs.md (`cost_details`): a student needs the answer, not the sum."""
    work = _work(iterations, unet_images, unet_images_grad, vae_decodes, vae_decodes_grad)
    got = ", ".join(SHORT_DOWNLOADS[d] for d in downloads) if downloads else "none"
    if work["unet_images"] or work["vae_decodes"]:
        cost = gpu_cost(**work)
        time = f"about {_duration(cost['T4'])} on a T4, {_duration(cost['A100'])} on an A100 at the course size"
    else:
        time = "no diffusion model runs here"
    return (f"**What it costs:** {time}; {SHORT_MEMORY[memory]}; downloads: {got} "
            f"([how this is estimated](../docs/costs.md)).")


def cost_details(name: str, iterations: float = 0, unet_images: int = 0, unet_images_grad: int = 0,
                 vae_decodes: int = 0, vae_decodes_grad: int = 0, memory: str = "paper", downloads=("sd2", "pidinet"),
                 note: str = "") -> str:
    """One notebook's section of docs/costs.md: its counted work, the sum behind its one-line cost, its note."""
    work = _work(iterations, unet_images, unet_images_grad, vae_decodes, vae_decodes_grad)
    lines = [f"## {name}", ""]
    if work["unet_images"] or work["vae_decodes"]:
        cost = gpu_cost(**work)
        parts = f"{iterations:g} paper iteration(s) x (1,270 UNet evaluations, 682 with gradients; 147 VAE decodes, " \
                f"145 with gradients)" if iterations else ""
        extra = f" + {unet_images} UNet evaluations and {vae_decodes} VAE decodes for the explorers and " \
                f"comparisons" if unet_images or vae_decodes else ""
        lines.append(f"Counted work: {parts}{extra if parts else extra[3:]} = {work['unet_images']:,} UNet evaluations "
                     f"({work['unet_images_grad']:,} with gradients) and {work['vae_decodes']:,} VAE decodes "
                     f"({work['vae_decodes_grad']:,} with gradients): about {_duration(cost['T4'])} on a T4 and "
                     f"{_duration(cost['A100'])} on an A100.")
    else:
        lines.append("No diffusion model runs.")
    lines.append(f"Peak memory: {MEMORY[memory]}. Downloads: "
                 + ("; ".join(DOWNLOADS[d] for d in downloads) if downloads else "none") + ".")
    if note:
        lines.append(note)
    return "\n".join(lines) + "\n"


def costs_document(sections: list) -> str:
    """docs/costs.md: the assumption, the per-evaluation arithmetic, then one section per notebook."""
    head = f"""# What the notebooks cost

Written by `scripts/build_notebooks.py` from each notebook's `# %% cost` line; do not edit by hand.

Every notebook opens with one line: its time on a T4 and an A100 at the course size (50 steps at 512 px).
Those times are estimates from one assumption (`zsharm.teaching.setup.gpu_cost`), not measurements: one UNet
evaluation of one image at 512 px is about {UNET_TFLOP_512} TFLOP and a VAE decode about
{VAE_DECODE_TFLOP_512} TFLOP, a backward pass costs {BACKWARD_FACTOR:g} times its forward, and a GPU sustains
{SUSTAINED_FRACTION:.0%} of its fp16 peak (T4 {GPU_FP16_TFLOPS['T4']:g}, A100 {GPU_FP16_TFLOPS['A100']:g}
TFLOPS): {seconds_per('unet', 'T4'):.3f} s and {seconds_per('unet', 'A100'):.3f} s per UNet evaluation. One
iteration of the paper's stage 2 at 50 steps counts 1,270 UNet evaluations (682 with gradients) and 147 VAE
decodes (145 with gradients). Measure your own machine with `zsharm bench`.

"""
    return head + "\n".join(sections)


# ----------------------------------------------------------------------------- the authors' published results

AUTHORS_REPOSITORY = "WindVChen/Diff-Harmonization"
AUTHORS_COMMIT = "21a4383acb8da70e4f6c61b725db67129e10fcad"
AUTHORS_FIGURES = ("visualizations.png", "visualizations2.png", "visualizations3.png", "visualizations4.png")
AUTHORS_FIGURE_URL = "https://raw.githubusercontent.com/{repository}/{commit}/assets/{name}"


def authors_figure(name: str):
    """One of the authors' published result figures (Apache-2.0, their repository's assets/ at a pinned
    commit) as a PIL image, fetched once into the zsharm cache (zsharm.cache.fetch); None, with a one-line note,
    when offline (ZSHARM_OFFLINE=1 or no network) or when what arrives is not a picture."""
    from PIL import Image

    from zsharm.cache import cache_dir, fetch, offline
    if name not in AUTHORS_FIGURES:
        raise ZsharmError(f"unknown authors' figure {name!r}; one of {', '.join(AUTHORS_FIGURES)}")
    path = cache_dir("authors_figures", AUTHORS_COMMIT[:12]) / name
    where = f"it is in github.com/{AUTHORS_REPOSITORY}/assets"
    if not path.is_file():
        if offline():
            print(f"(offline: the authors' figure {name} is not shown; {where})")
            return None
        try:
            fetch(AUTHORS_FIGURE_URL.format(repository=AUTHORS_REPOSITORY, commit=AUTHORS_COMMIT, name=name), path,
                  what=f"the authors' figure {name}", hint=where, progress=False)
            with Image.open(path) as check:
                check.verify()
        except Exception as exc:  # no network, a proxy's error page: the notebook goes on without the picture
            path.unlink(missing_ok=True)
            print(f"(could not fetch the authors' figure {name}: {type(exc).__name__}; {where})")
            return None
    with Image.open(path) as image:
        return image.convert("RGB")


def show_authors_figure(name: str, caption: str, width: float = 12.0):
    """Show an authors' figure with its attribution; prints the one-line note instead when offline."""
    image = authors_figure(name)
    if image is None:
        return None
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(width, width * image.height / image.width))
    ax.imshow(image)
    ax.axis("off")
    ax.set_title(f"{caption}\nPublished result of Chen et al. (SD 2 base), github.com/{AUTHORS_REPOSITORY} "
                 f"assets/{name} at {AUTHORS_COMMIT[:7]}, Apache-2.0", fontsize=9)
    plt.show()
    return fig
