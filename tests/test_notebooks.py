"""The notebook series, the attention recorder and plots of zsharm.teaching.plots, and `zsharm figures`.

Every notebook is executed with papermill on the tiny model (ZSHARM_MODEL=tiny, ZSHARM_QUICK=1) in a kernel of
the interpreter running the tests; the committed notebooks must carry no outputs and no machine paths, and
must be what scripts/build_notebooks.py makes of their sources.
"""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zsharm.edit.attention import AttentionReplace, AttentionStore, controlled_attention
from zsharm.config import HarmonizeConfig
from zsharm.errors import ZsharmError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


# tiny models are many small ops; the notebooks' kernels get OMP_NUM_THREADS=1 for the same reason
pytestmark = pytest.mark.usefixtures("one_thread")


def _nb(path):
    return json.loads(path.read_text())


def _source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


# ----------------------------------------------------------------------------- the committed notebooks

def test_the_series_is_complete_and_numbered():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert numbers == [f"{i:02d}" for i in range(11)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path):
    text = path.read_text()
    nb = json.loads(text)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name}: a cell keeps outputs"
            assert cell["execution_count"] is None, f"{path.name}: a cell keeps an execution count"
    for outside in ("/work", "/root", "/home", "C:\\\\Users", "METHOD.md", "../shared", "shared/"):
        assert outside not in text, f"{path.name} points outside the repository: {outside}"
    # opens with what it teaches and a Colab badge, then what it costs; closes with exercises, each hinted
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and _source(first).startswith(f"# {path.name[:2]} ·")
    assert "What this notebook teaches" in _source(first)
    assert f"colab.research.google.com/github/zsharm/zsharm/blob/main/notebooks/{path.name})" in _source(first)
    # the cost is one line; its arithmetic is in docs/costs.md
    cost = _source(nb["cells"][1])
    assert cost.startswith("**What it costs:**") and "\n" not in cost and "(../docs/costs.md)" in cost
    assert "TFLOP" not in cost and "UNet evaluations" not in cost
    if "no diffusion model runs" not in cost:
        assert "on a T4" in cost and "on an A100" in cost
    # exercises, each hinted, then a graded one: its check cell, then its collapsed solution
    exercises, check, solution = nb["cells"][-3:]
    assert exercises["cell_type"] == "markdown" and "## Exercises" in _source(exercises)
    numbered = [line for line in _source(exercises).split("\n") if line[:3] in ("1. ", "2. ", "3. ", "4. ", "5. ")]
    assert numbered and _source(exercises).count("<details><summary>Hint</summary>") == len(numbered)
    assert "**Graded:**" in numbered[-1]
    assert check["cell_type"] == "code" and f'right = check("{path.name[:2]}", ANSWER)' in _source(check)
    assert "ANSWER = None" in _source(check)
    assert solution["cell_type"] == "markdown" and _source(solution).startswith("<details><summary>Solution</summary>")
    assert "ANSWER = " in _source(solution)
    # no markdown swallowed by a code cell: a heading there is a missing "# %% [markdown]" in the source
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not [line for line in _source(cell).split("\n") if line.startswith("# #")], \
                f"{path.name}: a markdown heading ended up as a comment in a code cell"
    # the papermill parameters cell follows the environment and has the FULL switch
    params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    code = _source(params[0])
    assert 'os.environ.get("ZSHARM_MODEL", "auto")' in code  # SD 2 where it can run, else the toy prior
    assert 'os.environ.get("ZSHARM_QUICK") == "1"' in code
    assert "DEVICE = None" in code and "FULL = False" in code
    # the set-up is one library call
    assert sum("= setup(MODEL, DEVICE, quick=QUICK, full=FULL" in _source(c) for c in nb["cells"]) == 1
    # the Colab install cell runs only on Colab, through %pip
    install = [c for c in nb["cells"] if "google.colab" in _source(c)]
    assert len(install) == 1 and 'if "google.colab" in sys.modules' in _source(install[0])
    assert "%pip install -q -e ./zsharm" in _source(install[0]) and "subprocess" not in _source(install[0])


def test_the_repository_is_named_in_one_place():
    build = runpy.run_path(str(REPO / "scripts" / "build_notebooks.py"))
    url = build["REPOSITORY"]
    holders = [p for p in (REPO / "scripts").rglob("*.py") if url in p.read_text()]
    holders += [p for p in (REPO / "zsharm").rglob("*.py") if url in p.read_text()]
    assert holders == [REPO / "scripts" / "build_notebooks.py"]
    assert (REPO / "scripts" / "build_notebooks.py").read_text().count(url) == 1


def test_the_overview_lists_every_notebook_of_the_series():
    overview = "".join(_source(c) for c in _nb(NOTEBOOKS[0])["cells"] if c["cell_type"] == "markdown")
    rows = [line.split("|")[1].strip() for line in overview.split("\n") if line.startswith("| ") and line[2:4].isdigit()]
    assert rows == [p.name[:2] for p in NOTEBOOKS]


def test_a_graded_solution_is_right_and_the_unanswered_check_says_so(capsys):
    from zsharm.teaching.exercises import check
    for path in NOTEBOOKS:
        solution = _source(_nb(path)["cells"][-1])
        code = solution.split("```python\n", 1)[1].split("```", 1)[0]
        namespace = {}
        exec(code, namespace)
        assert check(path.name[:2], namespace["ANSWER"]), f"{path.name}: its solution is refused"
        assert check(path.name[:2], None) is False


def test_the_attention_notebook_claims_nothing_its_figures_contradict():
    text = (REPO / "scripts" / "notebooks" / "03_attention_maps.py").read_text()
    assert "takes most of the attention" not in text and "(map - min)" not in text
    assert "NORMALISATION" in text  # the colour bars say how the maps are scaled


def test_the_hint_of_the_evaluation_notebook_runs(monkeypatch):
    """Exercise 3's hint, as written, builds the method (it once passed a schedule name as the config)."""
    import re
    from zsharm.harmonizer import zsharm_method
    from zsharm.teaching.setup import setup
    text = (REPO / "scripts" / "notebooks" / "09_evaluation.py").read_text()
    hint = re.search(r"<code>(zsharm_method\(.*?\))</code>", text.replace("\n#    ", " ")).group(1)
    course = setup("tiny", "cpu", quick=True)
    method = eval(hint, {"zsharm_method": zsharm_method, "MODEL": "tiny", "course": course, "n": 1, "DEVICE": "cpu"})
    assert callable(method)


def test_committed_notebooks_match_their_sources(capsys):
    build = runpy.run_path(str(REPO / "scripts" / "build_notebooks.py"))
    assert build["main"](["--check"]) == 0, capsys.readouterr().err


def test_build_parses_cells_and_magics(tmp_path):
    build = runpy.run_path(str(REPO / "scripts" / "build_notebooks.py"))
    source = tmp_path / "99_x.py"
    source.write_text('# %% [markdown]\n# # Title\n#\n# text\n\n# %% install\n\n'
                      '# %% tags=["parameters"]\nA = 1\n\n# %%\n# %matplotlib inline\nprint(A)\n')
    nb = json.loads(build["build"](source))
    kinds = [c["cell_type"] for c in nb["cells"]]
    assert kinds == ["markdown", "code", "code", "code"]
    assert _source(nb["cells"][0]).startswith("# Title\n\n[![Open In Colab]") and _source(nb["cells"][0]).endswith("\n\ntext")
    assert "google.colab" in _source(nb["cells"][1])
    assert "colab-badge.svg" in _source(nb["cells"][0])
    assert nb["cells"][2]["metadata"]["tags"] == ["parameters"]
    assert _source(nb["cells"][3]) == "%matplotlib inline\nprint(A)"
    assert [c["id"] for c in nb["cells"]] == ["cell-00", "cell-01", "cell-02", "cell-03"]


# ----------------------------------------------------------------------------- executing them

@pytest.fixture(scope="module")
def kernel_of_this_interpreter(tmp_path_factory):
    """A kernelspec that starts this interpreter, found through JUPYTER_PATH (so the notebooks run against the
    zsharm under test, whatever `python3` kernels the machine has)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "zsharm-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "zsharm tests", "language": "python"}))
    return root


# the explorers each notebook shows (zsharm.teaching.widgets): one per stage at least
EXPLORERS = {"02": 1, "03": 2, "04": 1, "05": 2, "06": 1, "07": 1}
CELL_TIMEOUT = 240  # seconds; no cell takes a tenth of it on the tiny model


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_the_tiny_model(path, tmp_path, monkeypatch, pidinet_dir, kernel_of_this_interpreter):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_of_this_interpreter))
    monkeypatch.setenv("ZSHARM_MODEL", "tiny")
    monkeypatch.setenv("ZSHARM_QUICK", "1")
    monkeypatch.setenv("ZSHARM_PIDINET_WEIGHTS", str(pidinet_dir))
    monkeypatch.setenv("ZSHARM_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # tiny models are many small ops: one thread each is several times faster than two fighting
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.delenv("ZSHARM_EVALUATOR", raising=False)
    monkeypatch.delenv("ZSHARM_VLM", raising=False)
    out = tmp_path / path.name
    # cwd is the notebooks folder, as for a reader; the notebooks find data/ by walking up to pyproject.toml
    papermill.execute_notebook(str(path), str(out), kernel_name="zsharm-test", cwd=str(path.parent),
                               progress_bar=False, log_output=False, execution_timeout=CELL_TIMEOUT)
    nb = _nb(out)
    # A cell stalled on a lost reply resumes when the timeout's poll finds it (jupyter/nbclient#312), with no
    # error: a cell that lasted the timeout is a hang, and fails here.
    for cell in nb["cells"]:
        duration = cell.get("metadata", {}).get("papermill", {}).get("duration") or 0.0
        assert duration < CELL_TIMEOUT - 1, f"{path.name}: a cell hung for the whole timeout:\n{_source(cell)[:200]}"
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
    explorers = [k for k, o in enumerate(outputs) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(explorers) == EXPLORERS.get(path.name[:2], 0), f"{path.name}: explorers shown {len(explorers)}"
    for k in explorers:  # each followed by its still picture, for pages without the live widget
        assert "image/png" in outputs[k + 1].get("data", {})
    # no progress bar is saved (a frozen "0%|" line, or a widget no reopened notebook can show)
    saved = json.dumps(outputs)
    assert "it/s]" not in saved and "%|" not in saved, f"{path.name} saved a progress bar"
    text = "".join("".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream")
    assert "The tiny model is random" in text  # the notebook says what to look at on a random model
    assert "Traceback" not in text and "Warning" not in text, f"{path.name} printed a warning or traceback"
    if "show_authors_figure" in path.read_text():  # offline: the authors' figures are skipped with a note
        assert "(offline: the authors' figure" in text
    assert not any(REPO.joinpath(p).exists() for p in ("notebooks/figures", "notebooks/runs"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_the_toy_prior_a_laptops_default(path, tmp_path, monkeypatch, pidinet_dir,
                                                           kernel_of_this_interpreter):
    """`auto` on a CPU is the toy prior: its own map resolution and edge loss, the tiny VLM offline. Run short
    (ZSHARM_QUICK), every notebook must still run through (notebook 10 once stopped on the toy's maps). PiDiNet's
    weights (0.4 MB, fetched on first use) are there: 02, 05, 06 and 08 show its edges on the toy too."""
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_of_this_interpreter))
    for name, value in dict(ZSHARM_MODEL="toy", ZSHARM_QUICK="1", ZSHARM_OFFLINE="1", HF_HUB_OFFLINE="1",
                            MPLBACKEND="module://matplotlib_inline.backend_inline", OMP_NUM_THREADS="1",
                            MKL_NUM_THREADS="1").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ZSHARM_PIDINET_WEIGHTS", str(pidinet_dir))
    for name in ("ZSHARM_EVALUATOR", "ZSHARM_VLM"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / path.name
    papermill.execute_notebook(str(path), str(out), kernel_name="zsharm-test", cwd=str(path.parent),
                               progress_bar=False, log_output=False, execution_timeout=CELL_TIMEOUT)
    outputs = [o for c in _nb(out)["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert [o for o in outputs if "image/png" in o.get("data", {})], f"{path.name} drew no figure"
    text = "".join("".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream")
    assert "Traceback" not in text, f"{path.name} printed a traceback"


# ----------------------------------------------------------------------------- zsharm.teaching.plots

def _image(width=128, height=96, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([0.3 + 0.5 * x, 0.4 + 0.3 * y, 0.6 - 0.3 * x], -1) + 0.05 * rng.standard_normal((height, width, 3))
    return Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8))


def test_layer_names():
    from zsharm.teaching.trace import layer_name
    assert layer_name("down_blocks.2.attentions.0.transformer_blocks.0.attn2.processor") == "down2.0"
    assert layer_name("up_blocks.1.attentions.2.transformer_blocks.0.attn1.processor") == "up1.2"
    assert layer_name("mid_block.attentions.0.transformer_blocks.0.attn2.processor") == "mid.0"


def test_trace_records_every_step_and_layer_with_the_right_shapes(tiny_pipe):
    from zsharm.teaching.trace import trace_attention
    steps = 4
    config = HarmonizeConfig.paper(steps=steps, size=128)
    trace = trace_attention(tiny_pipe, _image(), "cat bright greyscale", config, cross_res=(32, 16), self_res=(32,))
    rec = trace.recorder
    assert trace.image.size == (128, 128)  # work size: 128x96 -> long side 128, short side rounded to 64s
    assert rec.steps == list(range(steps - 1))
    assert len(trace.timesteps) == steps - 1 and trace.output.shape == (128, 128, 3)
    # SD 2's layout in the tiny model: image/32 maps in down2, up1; image/16 ones in down1, up2
    assert rec.layers(True) == ["down1.0", "down2.0", "up1.0", "up1.1", "up2.0", "up2.1"]
    assert rec.layers(True, shape=(4, 4)) == ["down2.0", "up1.0", "up1.1"]
    assert rec.layers(False) == ["down2.0", "up1.0", "up1.1"]
    for step in rec.steps:  # every (step, layer) is there
        for layer in rec.layers(True):
            m = rec.map(step, layer)
            assert m.shape == ((4, 4, 77) if layer in ("down2.0", "up1.0", "up1.1") else (8, 8, 77))
            assert torch.allclose(m.sum(-1), torch.ones(m.shape[:2]), atol=1e-4)  # softmax rows, head mean
        for layer in rec.layers(False):
            assert rec.map(step, layer, is_cross=False).shape == (4, 4, 16)
    assert len(rec.maps) == (steps - 1) * (6 + 3)
    # the mean over steps and layers is the plain mean of the stored maps
    manual = torch.stack([rec.map(s, l) for s in rec.steps for l in ("down2.0", "up1.0", "up1.1")]).mean(0)
    assert torch.allclose(rec.mean(), manual)
    assert trace.tokens == ["<start>", "cat", "bright", "grey", "scale", "<end>"]
    assert trace.spans[-1] == ("greyscale", [3, 4])
    with pytest.raises(KeyError):
        rec.map(steps, "down2.0")


def test_recorder_with_inner_replacement_changes_nothing_and_restores_processors(tiny_pipe):
    from zsharm.teaching.trace import AttentionRecorder, recording_attention
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    x = torch.cat([latents] * 2)
    context = torch.randn(4, 77, 32, generator=g)
    before = dict(tiny_pipe.unet.attn_processors)
    with torch.no_grad():
        store = AttentionStore(num_pixels=(4 * 4,), places=("down", "up"))
        with controlled_attention(tiny_pipe.unet, AttentionReplace(5, 5, store=store)):
            reference = tiny_pipe.unet(x, 501, encoder_hidden_states=context).sample
        recorder = AttentionRecorder((128, 128), cross_res=(32,), self_res=(), inner=AttentionReplace(5, 5))
        with recording_attention(tiny_pipe.unet, recorder):
            recorded = tiny_pipe.unet(x, 501, encoder_hidden_states=context).sample
    assert torch.equal(reference, recorded)
    assert dict(tiny_pipe.unet.attn_processors) == before
    # the recorder keeps the conditional rows (the last two of four) before the replacement, like the store
    for layer, stored in zip(recorder.layers(True), store.maps[("down", True)] + store.maps[("up", True)]):
        assert torch.allclose(recorder.maps[(0, layer, True)], stored.mean(1).reshape(2, 4, 4, 77), atol=1e-6)


def test_recorder_refuses_a_size_without_those_maps():
    from zsharm.teaching.trace import AttentionRecorder
    with pytest.raises(ZsharmError, match="image/32"):
        AttentionRecorder((100, 128))


def test_denoise_and_latent_errors(tamed_pipe):
    from zsharm.edit.diffusion import Run, text_embeddings
    from zsharm.edit.diffusion import image_to_tensor
    from zsharm.edit.inversion import ddim_invert
    from zsharm.teaching.trace import denoise, latent_errors
    run = Run(pipe=tamed_pipe, config=HarmonizeConfig.paper(steps=5, size=64), progress=False)
    inversion = ddim_invert(run, image_to_tensor(_image(64, 64)), "cat bright", torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond, empty = text_embeddings(run, "t", ["cat bright"]), text_embeddings(run, "t", [""])
    trajectory = denoise(run, inversion, cond, empty, 0.0)
    assert len(trajectory) == 4 and trajectory[0].shape == inversion.x_t.shape
    errors = latent_errors(trajectory, inversion)
    assert errors.shape == (4,) and (errors >= 0).all()
    # a known answer: the first step's error is the MSE against the latent one level down
    assert errors[0] == pytest.approx(torch.mean((trajectory[0] - inversion.latents[-2]) ** 2).item(), rel=1e-6)
    # per-step embeddings as lists give the same as one embedding repeated
    again = denoise(run, inversion, [cond] * 4, [empty] * 4, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(trajectory, again))


def test_measurements_have_known_answers():
    from skimage.color import rgb2lab
    from PIL import ImageFilter
    from zsharm.teaching.plots import colour_shift, structure_change
    image = _image()
    mask = np.zeros((96, 128), bool)
    mask[20:70, 30:90] = True
    assert colour_shift(image, image, mask) == 0.0
    assert structure_change(image, image, mask) == {"sobel_mse": 0.0}
    grey = np.full((96, 128, 3), 100, np.uint8)
    lighter = np.full((96, 128, 3), 120, np.uint8)
    expected = rgb2lab(lighter[:1, :1] / 255.0)[0, 0, 0] - rgb2lab(grey[:1, :1] / 255.0)[0, 0, 0]
    assert colour_shift(grey, lighter, mask) == pytest.approx(expected, rel=1e-5)
    # blur moves edges more than a colour cast does
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(3)))
    cast = np.clip(np.asarray(image) * [0.8, 0.9, 1.1], 0, 255).astype(np.uint8)
    assert structure_change(image, blurred, mask)["sobel_mse"] > 3 * structure_change(image, cast, mask)["sobel_mse"]


def test_word_maps_sum_tokens_and_tokens_are_labelled(tiny_pipe):
    from zsharm.teaching.trace import token_labels, word_maps
    cross = torch.rand(4, 5, 77)
    maps = word_maps(cross, [("cat", [1]), ("greyscale", [2, 3])])
    assert torch.equal(maps["cat"], cross[..., 1])
    assert torch.allclose(maps["greyscale"], cross[..., 2] + cross[..., 3])
    assert token_labels(tiny_pipe.tokenizer, "cat greyscale") == ["<start>", "cat", "grey", "scale", "<end>"]


def test_plots_draw(tiny_pipe):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from zsharm.teaching.plots import as_array, difference, latent_preview, plot_edges, plot_losses, plot_word_maps, show_images
    image = _image()
    fig = show_images([image, np.asarray(image), torch.rand(1, 3, 96, 128)], ["a", "b", "c"])
    assert len([ax for ax in fig.axes if ax.images]) == 3
    fig = plot_word_maps(image, torch.rand(3, 4, 77), [("cat", [1]), ("bright", [2])], mask=np.ones((96, 128), bool))
    assert len(fig.axes) == 4  # the image, two words and their shared colour bar
    ax = plot_losses([dict(step=0, iter=0, a=1.0), dict(step=0, iter=1, a=0.5), dict(step=1, iter=0, a=0.7)], ["a"])
    assert len(ax.lines) == 2  # the curve and one timestep boundary
    fig = plot_edges(image, {"Sobel": torch.rand(1, 3, 96, 128), "PiDiNet": torch.rand(1, 1, 96, 128)})
    assert len(fig.axes) == 3
    assert latent_preview(torch.randn(1, 4, 8, 8)).shape == (8, 8, 3)
    assert as_array(image).max() <= 1.0 and difference(image, image).max() == 0.0
    plt.close("all")


def test_repo_root_and_tokenizer(tmp_path):
    from zsharm.teaching.setup import is_tiny, load_tokenizer, repo_root
    assert repo_root(REPO / "notebooks") == REPO
    with pytest.raises(ZsharmError, match="pyproject.toml"):
        repo_root(tmp_path)
    assert is_tiny("tiny") and is_tiny("tiny-tamed") and not is_tiny("stabilityai/stable-diffusion-2-base")
    assert load_tokenizer("tiny")("cat").input_ids == [49406, 2368, 49407]


def test_notebook_01_asks_smolvlm_where_it_can_be_had_and_the_tiny_vlm_offline(monkeypatch, tmp_path):
    """A student offline on a laptop (the toy prior) must not meet a download error in notebook 01."""
    from zsharm.describe.vlm import DEFAULT_VLM
    from zsharm.teaching.setup import course_vlm
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.delenv("ZSHARM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert course_vlm("auto") == DEFAULT_VLM                        # a connection: the real one
    assert course_vlm("auto", tiny=True) == "tiny"                  # the tests' quick run
    assert course_vlm("my/vlm", tiny=True) == "my/vlm"              # asked for: as asked
    monkeypatch.setenv("ZSHARM_OFFLINE", "1")
    assert course_vlm("auto") == "tiny"                             # offline, nothing cached
    snapshot = tmp_path / "empty-hub" / "models--HuggingFaceTB--SmolVLM-Instruct"
    (snapshot / "snapshots" / "abc").mkdir(parents=True)
    (snapshot / "refs").mkdir()
    (snapshot / "refs" / "main").write_text("abc")
    (snapshot / "snapshots" / "abc" / "config.json").write_text("{}")
    assert course_vlm("auto") == DEFAULT_VLM                        # offline, cached
    code = (REPO / "scripts" / "notebooks" / "01_vlm_prompting.py").read_text()
    assert 'os.environ.get("ZSHARM_VLM", "auto")' in code and "course_vlm(VLM" in code


# ----------------------------------------------------------------------------- zsharm figures

def _png(path):
    with Image.open(path) as image:
        image.load()
        return image


def test_figures_command_writes_the_weight_free_figures(tmp_path, capsys):
    from zsharm.commands.cli import main
    assert main(["figures", "--out", str(tmp_path), "--only", "pipeline,decision-trace", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decision_trace.png", "pipeline.png"]
    for name in ("pipeline.png", "decision_trace.png"):
        image = _png(tmp_path / name)
        assert image.width > 900 and image.height > 400
        assert 10_000 < (tmp_path / name).stat().st_size < 400_000


def test_edge_figure_uses_the_published_pidinet(tmp_path, monkeypatch, pidinet_dir):
    from zsharm.commands.cli import main
    monkeypatch.setenv("ZSHARM_PIDINET_WEIGHTS", str(pidinet_dir))
    assert main(["figures", "--out", str(tmp_path), "--only", "edges", "--quiet"]) == 0
    image = _png(tmp_path / "edge_maps.png")
    assert image.mode == "P" and image.width > 800  # a palette PNG, small enough to commit
    assert (tmp_path / "edge_maps.png").stat().st_size < 400_000


def test_edge_maps_of_a_step_edge(pidinet_dir):
    from zsharm.teaching.figures import edge_maps
    from zsharm.edit.pidinet import load_pidinet
    photo = np.zeros((64, 64, 3), np.uint8)
    photo[:, 32:] = 255
    maps = edge_maps(photo, load_pidinet(pidinet_dir))
    sobel, pidinet = maps["Sobel E_S"], maps["PiDiNet E_D"]
    assert sobel.shape == pidinet.shape == (64, 64)
    assert sobel[:, 30:34].mean() > 10 * sobel[:, :20].mean()  # the edge is where the step is
    assert pidinet[:, 28:36].mean() > pidinet[:, :16].mean() + 0.2


def test_figures_that_run_the_method_need_a_model(tmp_path, capsys):
    from zsharm.commands.cli import main
    assert main(["figures", "--out", str(tmp_path), "--only", "ablations"]) == 2
    assert "figure 'ablations' runs the method: give --model" in capsys.readouterr().err
    assert main(["figures", "--out", str(tmp_path), "--only", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zsharm: error: unknown figure 'nonsense'") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_backgrounds_figure_on_the_tiny_model(tmp_path, monkeypatch, pidinet_dir):
    from zsharm.commands.cli import main
    monkeypatch.setenv("ZSHARM_PIDINET_WEIGHTS", str(pidinet_dir))
    assert main(["figures", "--out", str(tmp_path), "--only", "backgrounds", "--model", "tiny", "--steps", "2",
                 "--size", "64", "--device", "cpu", "--dtype", "fp32", "--quiet"]) == 0
    assert _png(tmp_path / "backgrounds.png").width > 900


def test_scripted_loop_shows_every_decision():
    import matplotlib
    matplotlib.use("Agg")
    from zsharm.teaching.figures import decision_trace_figure, scripted_loop, SCRIPTED_SCORES
    result, images, original = scripted_loop()
    decisions = [r.decision for r in result.history]
    assert decisions == ["drop", "continue", "continue", "continue", "continue", "regenerate", "continue",
                         "continue", "continue", "continue", "conclude"]
    assert [r.score for r in result.history] == list(SCRIPTED_SCORES)
    assert result.best_iteration == 7 and result.stop_reason == "concluded"
    assert [r.candidate for r in result.history] == [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert len(images) == len(result.history) and images[0].size == original.size
    # the stand-in step changes the foreground only
    mask = np.asarray(Image.open(REPO / "data" / "demo" / "mask.png").convert("L")) > 100
    first = np.asarray(images[1])
    assert np.array_equal(first[~mask], np.asarray(original)[~mask]) and not np.array_equal(first, original)
    fig = decision_trace_figure(result, images, original)
    assert len([ax for ax in fig.axes if ax.images]) == len(images) + 1


def test_paste_keeps_the_foreground_and_fills_the_rest():
    from zsharm.teaching.figures import paste
    fg = _image(120, 80)
    mask = np.zeros((80, 120), bool)
    mask[10:50, 20:60] = True
    background = np.full((300, 200, 3), 7, np.uint8)
    out = np.asarray(paste(fg, mask, background))
    assert out.shape == (80, 120, 3)
    assert np.array_equal(out[mask], np.asarray(fg)[mask])
    assert (out[~mask] == 7).all()


def test_save_figure_is_atomic_and_can_keep_colours(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from zsharm.teaching.figures import save_figure
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    assert save_figure(fig, tmp_path / "a.png").name == "a.png"
    save_figure(fig, tmp_path / "b.png", palette=False)
    assert _png(tmp_path / "a.png").mode == "P" and _png(tmp_path / "b.png").mode == "RGBA"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temp left behind
    plt.close(fig)


def _texts(fig):
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts) + "\n".join(t.get_text() for t in fig.texts)


def test_the_pipeline_figure_draws_stage_2_from_the_config_it_depicts():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from zsharm.teaching.figures import pipeline_figure
    paper = _texts(pipeline_figure(HarmonizeConfig.paper()))
    assert "paper schedule, DDIM 50 steps" in paper and "$0.1\\cdot$PiDiNet" in paper
    changed = _texts(pipeline_figure(HarmonizeConfig.fast(steps=12, edge_pidinet_weight=0.5, refine_iters=3)))
    assert "fast schedule, DDIM 12 steps" in changed and "$0.5\\cdot$PiDiNet" in changed
    assert "3 AdamW steps/step" in changed and "DDIM 50" not in changed
    default = _texts(pipeline_figure())  # the committed figure: the default configuration
    assert f"DDIM {HarmonizeConfig().steps} steps" in default
    assert "no edge loss" in _texts(pipeline_figure(HarmonizeConfig(use_edges=False)))
    plt.close("all")


def test_a_near_uniform_attention_map_is_drawn_near_uniform():
    """Maps are divided by their max (one normalisation, named on the colour bar): a min-max stretch would turn
    a 1% ripple into a full-range blob."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from zsharm.teaching.plots import NORMALISATION, overlay_map, plot_word_maps
    flat = 0.5 + 0.005 * torch.rand(4, 4, generator=torch.Generator().manual_seed(0))
    fig, ax = plt.subplots()
    shown = overlay_map(ax, _image(), flat)
    drawn = shown.get_array()
    assert drawn.max() - drawn.min() < 0.02 and drawn.max() <= 1.0
    cross = flat[..., None].repeat(1, 1, 77)
    fig = plot_word_maps(_image(), cross, [("cat", [1]), ("bright", [2])])
    assert fig.axes[-1].get_ylabel() == NORMALISATION  # the colour bar names the normalisation
    assert all("max 0.5" in ax.get_title() for ax in fig.axes[1:3])  # the absolute scale, in the title
    plt.close("all")
