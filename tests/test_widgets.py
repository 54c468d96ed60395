"""zsharm.teaching.widgets: every stage's explorer responds to each value of each control by redrawing, and
never calls the diffusion model (its views are computed once; the model is booby-trapped before the tour).
Also the course's set-up (zsharm.teaching.setup) and notebook 02's hand-written DDIM loops."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from zsharm.config import HarmonizeConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _agg():
    import matplotlib
    matplotlib.use("Agg")
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


def _demo(size=64):
    from zsharm.teaching.figures import demo_inputs
    image, mask, _ = demo_inputs()
    return image, mask


class ModelCalled(AssertionError):
    pass


@pytest.fixture
def no_model(monkeypatch):
    """After `arm(pipe)`, any UNet, VAE or text-encoder forward of `pipe` raises."""
    def arm(pipe):
        def boom(*args, **kwargs):
            raise ModelCalled("an explorer ran the model")
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            monkeypatch.setattr(module, "forward", boom)
        monkeypatch.setattr(pipe.vae, "decode", boom)
        monkeypatch.setattr(pipe.vae, "encode", boom)
    return arm


def tour(explorer, most=6):
    """Move every control through its values (at most `most` of them, evenly spread, ends included): each
    move redraws exactly once and changes the picture."""
    for name in explorer.controls:
        start = explorer.controls[name].value
        values = explorer.options(name)
        if len(values) > most:
            values = [values[round(k * (len(values) - 1) / (most - 1))] for k in range(most)]
        for value in values:
            if value == explorer.controls[name].value:
                continue
            before, draws = explorer.png, explorer.draws
            explorer.update(**{name: value})
            assert explorer.draws == draws + 1
            assert explorer.png != before, f"moving {name} to {value!r} left the figure unchanged"
        explorer.update(**{name: start})


def _shows_widget_and_png(explorer):
    bundle = explorer._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "application/vnd.jupyter.widget-view+json" in data
    assert Image.open(io.BytesIO(__import__("base64").b64decode(explorer.still()["image/png"]))).width > 100


# ----------------------------------------------------------------------------- the explorer itself

def test_moving_a_control_redraws_and_a_wrong_name_is_refused():
    import ipywidgets
    from zsharm.teaching.widgets import Explorer
    seen = []

    def draw(fig, k):
        seen.append(k)
        fig.add_subplot(1, 1, 1).plot([0, k])

    explorer = Explorer(draw, {"k": ipywidgets.IntSlider(value=1, min=1, max=3)})
    assert seen == [1]
    explorer.controls["k"].value = 2  # as a student's mouse does
    assert seen == [1, 2] and explorer.image.value == explorer.png
    explorer.update(k=3)
    assert seen == [1, 2, 3]
    with pytest.raises(KeyError, match="no control named"):
        explorer.update(q=1)
    _shows_widget_and_png(explorer)


# ----------------------------------------------------------------------------- one explorer per stage

@pytest.fixture(scope="module")
def iteration(tiny_pipe, pidinet_for_tests):
    from zsharm.edit.iteration import run_iteration
    image, mask = _demo()
    config = HarmonizeConfig.paper(steps=3, size=64)
    return run_iteration(tiny_pipe, image, mask, "astronaut bright warm", "astronaut dim blue", config,
                         progress=False, pidinet=pidinet_for_tests), config


@pytest.fixture(scope="module")
def pidinet_for_tests():
    from zsharm.edit.pidinet import random_pidinet
    return random_pidinet("tiny", seed=0).eval().requires_grad_(False)


def test_inversion_explorer_steps_without_the_model(tiny_pipe, iteration, no_model):
    from zsharm.edit.diffusion import Run, text_embeddings
    from zsharm.teaching.trace import denoise
    from zsharm.teaching.widgets import inversion_explorer, inversion_views
    result, config = iteration
    run = Run(pipe=tiny_pipe, config=config, progress=False)
    with torch.no_grad():
        cond, empty = text_embeddings(run, "t", [result.source]), text_embeddings(run, "t", [""])
    drifted = denoise(run, result.inversion, cond, empty, config.guidance)
    views = inversion_views(run, result.inversion, {"drift": drifted, "null text": result.nulltext.latents},
                            result.nulltext, result.work_input)
    assert len(views.decoded["drift"]) == len(result.inversion.timesteps) - 1
    no_model(tiny_pipe)
    explorer = inversion_explorer(views)
    assert explorer.options("step") == [1, 2]
    tour(explorer)
    from zsharm.teaching.plots import as_array
    for step in (1, 2):  # each panel shows that step's picture, not only a moved marker
        explorer.update(step=step)
        shown = [ax.images[0].get_array() for ax in explorer.figure.axes[:3]]
        assert np.array_equal(shown[0], views.inverted[-2 - (step - 1)])
        for picture, name in zip(shown[1:], views.decoded):
            assert np.array_equal(picture, as_array(views.decoded[name][step - 1]))
    _shows_widget_and_png(explorer)


def test_attention_explorers_move_over_the_recorded_trace(tiny_pipe, no_model):
    from zsharm.edit.blending import mask_at
    from zsharm.teaching.trace import trace_attention
    from zsharm.teaching.widgets import cross_attention_explorer, self_attention_explorer
    image, mask = _demo()
    trace = trace_attention(tiny_pipe, image, "astronaut bright warm", HarmonizeConfig.paper(steps=3, size=128),
                            cross_res=(32, 16), self_res=(32,))
    mask_work = mask_at(mask, trace.image.size, 0.5)
    no_model(tiny_pipe)
    cross = cross_attention_explorer(trace, mask_work)
    assert cross.options("word") == ["astronaut", "bright", "warm", "<start>"]
    tour(cross)
    selfs = self_attention_explorer(trace, mask_work, start=(1, 1))
    tour(selfs)


def test_refinement_explorer_walks_every_adamw_step(tiny_pipe, iteration, no_model):
    from zsharm.edit.blending import latent_mask
    from zsharm.edit.refinement import attention_mask_small
    from zsharm.teaching.widgets import refinement_explorer
    result, config = iteration
    refinement = result.refinement
    assert len(refinement.maps) == len(refinement.losses) == config.refine_iters * (config.steps - 1)
    assert refinement.maps[0] is refinement.maps_first and refinement.maps[-1] is refinement.maps_last
    w, h = result.work_input.size
    goal = attention_mask_small(latent_mask(result.mask_work, (w // 8, h // 8), config.mask_threshold),
                                tuple(refinement.maps[0][0].shape), config.mask_threshold)
    no_model(tiny_pipe)
    explorer = refinement_explorer(refinement, result.work_input, goal, result.mask_work)
    assert len(explorer.options("position")) == len(refinement.losses)
    tour(explorer)
    from zsharm.teaching.plots import upsample
    for k, position in enumerate(explorer.options("position")):  # the maps of that AdamW step, over its max
        explorer.update(position=position)
        a_fg = refinement.maps[k][0] / refinement.maps[k][0].max()
        shown = explorer.figure.axes[1].images[1].get_array()
        assert np.allclose(shown, upsample(a_fg, shown.shape), atol=1e-6)


def test_edge_explorers_sweep_and_take_an_upload(tiny_pipe, iteration, pidinet_for_tests, no_model):
    from zsharm.teaching.widgets import edge_sweep_explorer, edge_views, live_edges_explorer
    result, _ = iteration
    same = type(result)(**{**result.__dict__, "work_image": result.work_input})
    shifted = type(result)(**{**result.__dict__, "work_image": Image.fromarray(np.roll(np.asarray(result.work_input), 3, 1))})
    views = edge_views({"unchanged": same, "shifted": shifted, "output": result}, pidinet_for_tests)
    assert views.scores["unchanged"] == (0.0, 0.0, 0.0) and min(views.scores["shifted"][:2]) > 0
    no_model(tiny_pipe)
    tour(edge_sweep_explorer(views))

    calls = []
    original = pidinet_for_tests.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    pidinet_for_tests.forward = counted
    try:
        image, _ = _demo()
        live = live_edges_explorer(pidinet_for_tests, image, long_side=64)
        assert len(calls) == 1
        tour(live)  # the contrast slider: redraws only
        assert len(calls) == 1
        buffer = io.BytesIO()
        Image.fromarray(np.tile(np.uint8([[0, 255]]), (40, 20))[..., None].repeat(3, -1)).save(buffer, "PNG")
        before = live.png
        live.update(upload=({"name": "stripes.png", "type": "image/png", "size": len(buffer.getvalue()),
                             "content": memoryview(buffer.getvalue()),
                             "last_modified": __import__("datetime").datetime.now()},))
        assert live.png != before and len(calls) == 2
    finally:
        del pidinet_for_tests.forward


def test_replacement_explorer_over_a_grid_of_fractions(tiny_pipe, iteration, no_model):
    from zsharm.teaching.widgets import replacement_explorer, replacement_views
    result, config = iteration
    views = replacement_views(tiny_pipe, result, config, crosses=(0.0, 1.0), selfs=(0.0, 1.0))
    assert len(views.target_branch) == 4
    # the grid's (1, 1) point is the iteration's own edit: only the editing stage was repeated
    assert np.array_equal(views.target_branch[(1.0, 1.0)], result.edit.images[1])
    assert not np.array_equal(views.target_branch[(0.0, 0.0)], views.target_branch[(1.0, 1.0)])
    no_model(tiny_pipe)
    explorer = replacement_explorer(views)
    tour(explorer)
    from zsharm.teaching.plots import as_array
    for key in views.target_branch:  # the panels show that grid point's branch and blend
        explorer.update(cross=key[0], self_=key[1])
        target, blended = (explorer.figure.axes[k].images[0].get_array() for k in (1, 2))
        assert np.array_equal(target, as_array(views.target_branch[key]))
        assert np.array_equal(blended, as_array(views.blended[key]))


def test_decision_explorer_follows_the_loops_rule():
    from zsharm.teaching.figures import SCRIPTED_SCORES, scripted_loop
    from zsharm.teaching.widgets import decision_explorer, decision_trace
    # the stand-in trace makes the real loop's decisions
    real, _, _ = scripted_loop()
    trace = decision_trace(SCRIPTED_SCORES, iterations=10)
    assert [r.decision for r in trace.history] == [r.decision for r in real.history]
    assert trace.best_index == real.best_index and trace.stop_reason == real.stop_reason
    explorer = decision_explorer(SCRIPTED_SCORES[:6], iterations=5)
    tour(explorer)
    # a fall twice in a row after the kept score: regenerate
    explorer.update(s0=0.9, s1=0.1, s2=0.8, s3=0.7, s4=0.6, s5=0.5, budget=5)
    assert [r.decision for r in decision_trace([0.9, 0.1, 0.8, 0.7, 0.6, 0.5], 5).history][:4] == \
        ["continue", "drop", "continue", "regenerate"]


# ----------------------------------------------------------------------------- the set-up

def test_setup_is_one_call_with_the_course_settings(monkeypatch, capsys):
    from zsharm.errors import ZsharmError
    from zsharm.teaching.setup import settings, setup
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        course = setup("tiny", quick=True)
        assert torch.get_num_threads() == 1  # a tiny model runs single-threaded
        assert "The tiny model is random" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
    assert course.tiny and course.steps == 4 and course.size == 128 and course._pipe is None
    assert course.image.size == (course.mask.shape[1], course.mask.shape[0])
    assert course.config().steps == 4 and course.config(steps=7).steps == 7
    assert settings()["loop_budget"] == 3 and settings()["eval_images"] == 4 and len(settings()["gammas"]) == 3
    full = settings(full=True)
    assert full["loop_budget"] == 10 and full["eval_images"] is None and full["steps"] == 50
    with pytest.raises(ZsharmError, match="exclude each other"):
        settings(quick=True, full=True)


def test_gpu_cost_is_the_stated_arithmetic():
    from zsharm.teaching.setup import gpu_cost, seconds_per
    assert seconds_per("unet", "T4") == pytest.approx(0.8 / 6.5)
    cost = gpu_cost(unet_images=100, vae_decodes=10, unet_images_grad=20, vae_decodes_grad=5)
    for gpu in ("T4", "A100"):
        expected = seconds_per("unet", gpu) * (100 + 2 * 20) + seconds_per("vae", gpu) * (10 + 2 * 5)
        assert cost[gpu] == pytest.approx(expected)
    assert cost["T4"] / cost["A100"] == pytest.approx(312 / 65)
    assert gpu_cost(100, 0, size=256)["T4"] == pytest.approx(gpu_cost(100, 0)["T4"] / 4)


# ----------------------------------------------------------------------------- notebook 02's loops by hand

def _notebook_cell(name, defines):
    """The code of the cell of scripts/notebooks/`name` that defines `defines`."""
    import runpy
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    build = runpy.run_path(str(root / "scripts" / "build_notebooks.py"))
    cells = [body for kind, body, _ in build["parse"]((root / "scripts" / "notebooks" / name).read_text())
             if kind == "code" and f"def {defines}(" in body]
    assert len(cells) == 1, f"no single cell of {name} defines {defines}"
    return cells[0]


def test_the_hand_written_ddim_loops_of_notebook_02_equal_the_library(tamed_pipe):
    from zsharm.edit.diffusion import Run, text_embeddings
    from zsharm.edit.diffusion import image_to_tensor
    from zsharm.edit.inversion import ddim_invert
    from zsharm.teaching.trace import denoise
    namespace = {"torch": torch}  # the notebook imported it in its set-up cell
    exec(_notebook_cell("02_inversion_nulltext.py", "ddim_by_hand"), namespace)
    image, _ = _demo()
    config = HarmonizeConfig.paper(steps=6, size=64)
    run = Run(pipe=tamed_pipe, config=config, progress=False)
    work = image.resize((64, 64))
    inversion = ddim_invert(run, image_to_tensor(work), "astronaut bright", torch.Generator().manual_seed(0))
    with torch.no_grad():
        empty, cond = text_embeddings(run, "t", [""]), text_embeddings(run, "t", ["astronaut bright"])
    by_hand = namespace["ddim_by_hand"](tamed_pipe.unet, tamed_pipe.scheduler, inversion.latents[0], empty, config.steps)
    assert len(by_hand) == len(inversion.latents)
    for a, b in zip(by_hand, inversion.latents):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # sampling with guidance, from the inverted noise down, equals the library's denoising walk
    down = namespace["sample_by_hand"](tamed_pipe.unet, tamed_pipe.scheduler, inversion.x_t, cond, empty, 2.5,
                                       inversion.timesteps[1:])
    torch.testing.assert_close(down, denoise(run, inversion, cond, empty, 2.5)[-1], rtol=1e-4, atol=1e-5)


def test_the_authors_figures_are_cached_and_skipped_offline(tmp_path, monkeypatch, capsys):
    from zsharm.errors import ZsharmError
    from zsharm.teaching.setup import AUTHORS_COMMIT, authors_figure, show_authors_figure
    monkeypatch.setenv("ZSHARM_CACHE", str(tmp_path))
    monkeypatch.setenv("ZSHARM_OFFLINE", "1")
    assert authors_figure("visualizations.png") is None
    assert show_authors_figure("visualizations2.png", "x") is None
    notes = capsys.readouterr().out.strip().split("\n")
    assert len(notes) == 2 and all(n.startswith("(offline: the authors' figure visualizations") for n in notes)
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.part"))
    # once cached (as a download leaves it), it is read from the cache without the network
    cached = tmp_path / "authors_figures" / AUTHORS_COMMIT[:12] / "visualizations3.png"
    Image.new("RGB", (40, 20), (1, 2, 3)).save(cached)
    figure = authors_figure("visualizations3.png")
    assert figure.size == (40, 20) and figure.getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(ZsharmError, match="unknown authors' figure"):
        authors_figure("elsewhere.png")


def test_an_authors_figure_is_fetched_once_and_a_non_picture_is_not_kept(tmp_path, monkeypatch, capsys,
                                                                         loopback_server):
    import io

    import zsharm.teaching.setup as setup_module
    monkeypatch.setenv("ZSHARM_CACHE", str(tmp_path))
    for name in ("ZSHARM_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(setup_module, "AUTHORS_FIGURE_URL", loopback_server.url("/{name}"))
    png = io.BytesIO()
    Image.new("RGB", (30, 10), (9, 8, 7)).save(png, format="PNG")
    loopback_server.files["/visualizations.png"] = png.getvalue()
    loopback_server.files["/visualizations2.png"] = b"<html>a proxy's page</html>"
    assert setup_module.authors_figure("visualizations.png").getpixel((0, 0)) == (9, 8, 7)
    assert setup_module.authors_figure("visualizations.png").size == (30, 10)  # from the cache
    assert loopback_server.requests == ["/visualizations.png"]
    assert setup_module.authors_figure("visualizations2.png") is None
    assert "could not fetch the authors' figure visualizations2.png" in capsys.readouterr().out
    assert not list((tmp_path / "authors_figures").rglob("visualizations2.png*"))


# ----------------------------------------------------------------------------- layout and display

def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0) * max(h, 0)


def test_the_edge_sweep_explorer_keeps_its_title_and_colour_bars_clear_of_the_panels():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from zsharm.teaching.widgets import EdgeViews, edge_sweep_explorer
    rng = np.random.default_rng(0)
    h, w = 96, 144
    names = ["no edge loss", "gamma 0", "gamma 0.1", "gamma 10"]
    mask = np.zeros((h, w), bool)
    mask[20:70, 40:100] = True
    views = EdgeViews(work_input=np.zeros((h, w, 3), np.uint8), mask_work=mask,
                      outputs={n: (rng.random((h, w, 3)) * 255).astype(np.uint8) for n in names},
                      sobel={n: rng.random((h, w)) for n in names + ["input"]},
                      pidinet={n: rng.random((h, w)) for n in names + ["input"]},
                      scores={n: (1e-3, 2e-3, 3.0) for n in names})
    fig = edge_sweep_explorer(views).figure
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    page = fig.bbox
    boxes = [ax.get_window_extent(renderer) for ax in fig.axes]
    texts = [fig._suptitle] + [ax.title for ax in fig.axes if ax.get_title()]
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert page.x0 - 1 <= extent.x0 and extent.x1 <= page.x1 + 1, f"{text.get_text()!r} is cut off"
        assert page.y0 - 1 <= extent.y0 and extent.y1 <= page.y1 + 1, f"{text.get_text()!r} is cut off"
        assert all(_overlap(extent, box) < 1 for box in boxes), f"{text.get_text()!r} runs into a panel"
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert _overlap(a, b) < 1, "a colour bar overlaps a panel"


def test_an_explorer_shows_its_picture_at_its_own_size_and_a_still_for_pages_without_widgets():
    import ipywidgets
    from IPython.core.interactiveshell import InteractiveShell
    from zsharm.teaching.widgets import LIVE_CLASS, STILL_CLASS, Explorer

    explorer = Explorer(lambda fig, k: fig.add_subplot(1, 1, 1).plot([0, k]),
                        {"k": ipywidgets.IntSlider(value=1, min=1, max=3)}, figsize=(4, 3))
    # the column's stretch would blow the picture up to the output's width
    assert explorer.image.layout.align_self == "flex-start" and explorer.image.layout.max_width == "100%"
    box = explorer.widget()
    assert LIVE_CLASS in box._dom_classes and "display: none" in box.children[-1].value
    # displayed: the widget (no picture in its bundle, so static pages don't show two), then the still picture
    shell = InteractiveShell.instance()
    published = []
    shell.display_pub.publish = lambda data, metadata=None, **kwargs: published.append(data)
    try:
        from IPython.display import display
        display(explorer)
    finally:
        InteractiveShell.clear_instance()
    assert len(published) == 2
    widget, still = published
    assert "application/vnd.jupyter.widget-view+json" in widget and "image/png" not in widget
    assert set(still) == {"text/html", "image/png", "text/plain"}
    assert f'class="{STILL_CLASS}" src="data:image/png;base64,{still["image/png"]}"' in still["text/html"]
    assert Image.open(io.BytesIO(__import__("base64").b64decode(still["image/png"]))).size[0] > 100


# ----------------------------------------------------------------------------- the hand-written mechanisms

def _notebook_code(name, containing):
    """The code of the one cell of scripts/notebooks/`name` containing `containing`."""
    import runpy
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    build = runpy.run_path(str(root / "scripts" / "build_notebooks.py"))
    cells = [body for kind, body, _ in build["parse"]((root / "scripts" / "notebooks" / name).read_text())
             if kind == "code" and containing in body]
    assert len(cells) == 1, f"no single cell of {name} contains {containing!r}"
    return cells[0]


def test_the_hand_written_recorder_of_notebook_03_records_the_librarys_maps(tiny_pipe, capsys):
    from zsharm.teaching.trace import trace_attention
    image, _ = _demo()
    config = HarmonizeConfig.paper(steps=3, size=128)
    source = "astronaut bright warm"
    trace = trace_attention(tiny_pipe, image, source, config, cross_res=(32, 16), self_res=())
    before = {name: type(p) for name, p in tiny_pipe.unet.attn_processors.items()}
    from types import SimpleNamespace
    course = SimpleNamespace(attention_divisors=(32, 16), attention_divisor=32)  # the notebook's set-up's
    namespace = dict(pipe=tiny_pipe, config=config, trace=trace, source=source, course=course)
    exec(_notebook_code("03_attention_maps.py", "class RecordingProcessor"), namespace)
    assert "records the library's maps in all" in capsys.readouterr().out
    assert {name: type(p) for name, p in tiny_pipe.unet.attn_processors.items()} == before  # put back


def test_the_hand_written_l_emb_of_notebook_04_equals_the_librarys(tiny_pipe, iteration, capsys):
    result, config = iteration
    namespace = dict(pipe=tiny_pipe, config=config, source=result.source, target=result.target, result=result,
                     refinement=result.refinement, torch=torch)
    exec(_notebook_code("04_embedding_refinement.py", "term_fg = "), namespace)
    assert capsys.readouterr().out.count("by hand") == 3


def test_the_hand_written_null_text_step_of_notebook_05_equals_the_librarys(tiny_pipe, iteration, pidinet_for_tests,
                                                                           capsys):
    result, config = iteration
    namespace = dict(pipe=tiny_pipe, GAMMAS=[0.0, 0.1], configs={"gamma 0.1": config},
                     results={"gamma 0.1": result}, pidinet=pidinet_for_tests)
    exec(_notebook_code("05_structure_edges.py", "m_hat, v_hat"), namespace)
    assert capsys.readouterr().out.count("by hand") == 4


def test_the_hand_written_replacement_of_notebook_06_equals_the_librarys_edit(tiny_pipe, iteration, capsys):
    result, config = iteration
    namespace = dict(pipe=tiny_pipe, config=config, kept=result, FRACTIONS=(0.0, 0.5, 1.0))
    exec(_notebook_code("06_prompt_to_prompt.py", "class ReplacementProcessor"), namespace)
    assert capsys.readouterr().out.count("the final latents differ from the library's edit by") == 2


def test_the_hand_written_rule_of_notebook_07_is_the_librarys(capsys):
    from zsharm.decide.rule import decide
    exec(_notebook_code("07_evaluator_decisions.py", "def my_decide("), {"decide": decide})
    assert "agrees with zsharm.decide.rule.decide" in capsys.readouterr().out
