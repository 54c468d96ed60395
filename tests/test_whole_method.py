"""The whole method by default: VLM descriptions (2 candidates), the authors' evaluator, the decision loop,
the VLM released before Stable Diffusion runs; and `zsharm harmonize` with no options doing all three stages."""

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_composite
from test_evaluator import random_model
from zsharm.commands.cli import main
from zsharm.config import HarmonizeConfig
from zsharm.decide.evaluator import Evaluator, read_mask_as_authors
from zsharm.decide.rule import CONTINUE, REGENERATE, decide
from zsharm.describe.description import Description
from zsharm.errors import ZsharmError
from zsharm.decide.loop import DROP, STOP

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["--model", "tiny", "--steps", "2", "--size", "64", "--no-edges", "--quiet", "--device", "cpu"]
ANSWERS = ["cat & (foreground) bright & (background) dull winter",
           "cat & (foreground) dazzling warm & (background) dim night",
           "cat & (foreground) bright summer & (background) shaded autumn",
           "cat & (foreground) bright golden & (background) dull cool",
           "cat & (foreground) bright sunny & (background) dim dusk"]


def replay(rows, budget=10):
    """The decisions `decide` gives the recorded scores, with the loop's bookkeeping (iteration 0 keeps the
    best candidate, a Regenerate starts a new score list, the last iteration of the budget is a Stop)."""
    first = [r for r in rows if r["iteration"] == 0]
    kept = max(range(len(first)), key=lambda k: (first[k]["score"], -k))
    expected = [CONTINUE if k == kept else DROP for k in range(len(first))]
    scores, regenerated = [first[kept]["score"]], False
    for row in rows[len(first):]:
        scores.append(row["score"])
        decision = decide(scores, regenerated)
        if row["iteration"] == budget - 1 and decision in (CONTINUE, REGENERATE):
            decision = STOP
        elif decision == REGENERATE:
            scores, regenerated = [], True
        expected.append(decision)
    return expected


# ---------------------------------------------------------------- the Harmonizer, stages faked


class Describer:
    """Stage 1 with a model that is 'loaded' from a question until `release`."""

    def __init__(self):
        self.loaded, self.events, self.asked_n = False, [], []

    def describe(self, image, mask, n=2, exclude=(), name=None):
        self.loaded = True
        self.events.append("describe")
        self.asked_n.append(n)
        return [Description.from_prompts(f"cat {w}", "cat dull") for w in ("bright", "dazzling", "sunny")[:n]]

    def regenerate(self, image, mask, tried, name=None):
        self.loaded = True
        self.events.append("regenerate")
        return Description.from_prompts("cat golden", "cat dim")

    def release(self):
        self.loaded = False
        self.events.append("release")


class Scores:
    """An evaluator whose scores are scripted; it records the masks and which method was asked."""

    name = "scripted"

    def __init__(self, scores):
        self.scores, self.calls = list(scores), []

    def score(self, image, mask):
        self.calls.append(("score", np.asarray(mask), np.asarray(image)))
        return self.scores.pop(0)


@pytest.fixture(autouse=True)
def stand_in_pipes_need_no_preparing(monkeypatch):
    """These tests hand Harmonizer a stand-in pipe (stage 2 is replaced): nothing to prepare."""
    import zsharm.models
    monkeypatch.setattr(zsharm.models, "prepare_pipeline", lambda pipe: pipe)


@pytest.fixture
def fake_stage_two(monkeypatch):
    """Stage 2 as a function that brightens the image a little and checks the VLM is not in memory."""
    import zsharm.edit.iteration
    seen = {"steps": 0, "inputs": [], "outputs": []}

    class Result:
        def __init__(self, image):
            self.work_image = image

    def iterate(pipe, current, mask_work, source, target, config, **options):
        assert not seen["describer"].loaded, "stage 2 ran while the VLM was loaded"
        seen["describer"].events.append("step")
        seen["steps"] += 1
        out = Image.fromarray(np.clip(np.asarray(current).astype(int) + 1, 0, 255).astype(np.uint8))
        seen["inputs"].append(np.asarray(current))
        seen["outputs"].append(np.asarray(out))
        return Result(out)

    monkeypatch.setattr(zsharm.edit.iteration, "iterate_at_work_size", iterate)
    return seen


@pytest.fixture
def soft_mask_files(tmp_path):
    image, mask = make_composite(width=96, height=64)
    Image.fromarray(image).save(tmp_path / "comp.png")
    soft = cv2.GaussianBlur(mask.astype(np.uint8) * 255, (0, 0), 2)
    Image.fromarray(soft).save(tmp_path / "mask.jpg")
    return tmp_path / "comp.png", tmp_path / "mask.jpg"


def test_the_vlm_is_released_before_stage_two_and_again_after_regenerate(fake_stage_two, soft_mask_files):
    from zsharm.harmonizer import Harmonizer
    describer = Describer()
    fake_stage_two["describer"] = describer
    # c0 0.5, c1 0.3 -> keep c0; 0.4, 0.35: fell twice -> regenerate; 0.45, 0.44, 0.43 -> conclude
    scores = Scores([0.5, 0.3, 0.4, 0.35, 0.45, 0.44, 0.43])
    harmonizer = Harmonizer(pipe=object(), evaluator=scores, describer=describer,
                            config=HarmonizeConfig.fast(size=64), progress=False)
    result = harmonizer(*soft_mask_files)
    assert describer.asked_n == [2]  # two candidates, as the authors
    assert describer.events == ["describe", "release", "step", "step", "step", "step", "regenerate", "release",
                                "step", "step", "step"]
    assert [r.decision for r in result.loop.history] == ["continue", "drop", "continue", "regenerate", "continue",
                                                         "continue", "conclude"]
    assert result.loop.history[4].source == "cat golden"  # the regenerated description ran


@pytest.mark.parametrize("schedule", ["fast", "paper"])
def test_the_evaluator_sees_the_soft_mask_file_and_the_schedules_scoring(fake_stage_two, soft_mask_files,
                                                                         schedule):
    from zsharm.harmonizer import Harmonizer
    fake_stage_two["describer"] = describer = Describer()
    scores = Scores([0.5, 0.6, 0.7])
    harmonizer = Harmonizer(pipe=object(), evaluator=scores, describer=describer,
                            config=HarmonizeConfig.named(schedule, size=64, steps=2), progress=False)
    harmonizer(*soft_mask_files, iterations=2)
    want = read_mask_as_authors(soft_mask_files[1])
    assert 0 < ((want > 0) & (want < 1)).sum()
    assert [c[0] for c in scores.calls] == ["score"] * 3
    assert all(np.array_equal(c[1], want) for c in scores.calls)
    # the paper scores each blend saved as a JPEG and re-read (evaluator_scoring "saved_jpeg"), fast as it is
    from zsharm.decide.evaluator import jpeg_round_trip
    shown = [jpeg_round_trip(Image.fromarray(out)) if schedule == "paper" else out
             for out in fake_stage_two["outputs"]]
    assert all(np.array_equal(np.asarray(c[2]), s) for c, s in zip(scores.calls, shown))
    # iteration 1 goes on from the kept candidate (c1, 0.6): in `paper` from its re-read JPEG, as the authors
    kept = fake_stage_two["outputs"][1]
    expected = jpeg_round_trip(Image.fromarray(kept)) if schedule == "paper" else kept
    assert np.array_equal(fake_stage_two["inputs"][2], expected)
    assert np.array_equal(expected, kept) == (schedule == "fast")  # the JPEG's loss is there to see


def test_candidates_asked_for_and_taken(fake_stage_two, soft_mask_files):
    from zsharm.harmonizer import Harmonizer
    fake_stage_two["describer"] = describer = Describer()
    config = HarmonizeConfig.fast(size=64)
    Harmonizer(pipe=object(), evaluator=Scores([0.1] * 4), describer=describer, config=config, progress=False,
               n_candidates=3)(*soft_mask_files, iterations=1)
    Harmonizer(pipe=object(), evaluator=None, describer=describer, config=config,
               progress=False)(*soft_mask_files, iterations=1)
    assert describer.asked_n == [3, 1]  # without an evaluator only the first would be used
    captions = [("cat bright", "cat dull"), ("cat dim", "cat dusk"), ("cat warm", "cat cool")]
    result = Harmonizer(pipe=object(), evaluator=Scores([0.1] * 4), describer=describer, config=config,
                        progress=False, n_candidates=2)(*soft_mask_files, candidates=captions, iterations=1)
    assert [r.source for r in result.loop.history] == ["cat bright", "cat dim"]
    with pytest.raises(ZsharmError, match="need the evaluator"):
        Harmonizer(pipe=object(), evaluator=None, n_candidates=2)


# ---------------------------------------------------------------- `zsharm harmonize`, every stage real


@pytest.fixture
def vlm_endpoint(monkeypatch):
    """An OpenAI-compatible endpoint on loopback answering distinct descriptions in turn."""
    asked = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            asked.append(self.path)
            answer = ANSWERS[(len(asked) - 1) % len(ANSWERS)]
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("ZSHARM_VLM_API_KEY", "test-key")
    yield f"http://127.0.0.1:{server.server_port}/v1", asked
    server.shutdown()
    server.server_close()


@pytest.fixture
def authors_evaluator_served(loopback_server, monkeypatch, tmp_path):
    """The authors' checkpoint URL pointed at loopback, serving a random ResNet-50 in their exact layout."""
    from zsharm.cache import git_blob_id
    from zsharm.decide import evaluator as module
    model = random_model((3, 4, 6, 3), 64, seed=4)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    loopback_server.files["/bestModel.pth"] = buffer.getvalue()
    (tmp_path / "expected.pth").write_bytes(buffer.getvalue())
    monkeypatch.setattr(module, "AUTHORS_URL", loopback_server.url("/bestModel.pth"))
    monkeypatch.setattr(module, "AUTHORS_GIT_BLOB", git_blob_id(tmp_path / "expected.pth"))
    monkeypatch.setenv("ZSHARM_CACHE", str(tmp_path / "cache"))
    for name in ("ZSHARM_OFFLINE", "HF_HUB_OFFLINE", "ZSHARM_EVALUATOR", module.WEIGHTS_ENV):
        monkeypatch.delenv(name, raising=False)
    return loopback_server, model


@pytest.mark.e2e
@pytest.mark.parametrize("schedule", ["fast", "paper"])
def test_harmonize_with_no_options_runs_all_three_stages(vlm_endpoint, authors_evaluator_served, tmp_path, capsys,
                                                         schedule):
    """`zsharm harmonize data/demo/composite.png --mask data/demo/mask.png --out out.png`, the README's first line,
    with the downloads served on loopback and a tiny SD."""
    from conftest import REPO
    url, asked = vlm_endpoint
    server, model = authors_evaluator_served
    comp, mask = REPO / "data" / "demo" / "composite.png", REPO / "data" / "demo" / "mask.png"
    out, history = tmp_path / "out.png", tmp_path / "history"
    code = main(["harmonize", str(comp), "--mask", str(mask), "--out", str(out), "--history", str(history),
                 "--base-url", url, "--vlm-model", "test", "--no-vlm-cache", "--schedule", schedule, *QUICK])
    assert code == 0, capsys.readouterr().err
    assert server.requests == ["/bestModel.pth"]  # the authors' evaluator, fetched once
    data = json.loads((history / "history.json").read_text())
    rows = data["iterations"]
    assert data["evaluator"] == "authors" and data["schedule"] == schedule
    assert [r["candidate"] for r in rows if r["iteration"] == 0] == [0, 1]  # two VLM candidates
    assert rows[0]["source"] == "cat bright" and rows[1]["source"] == "cat dazzling warm"
    assert len(asked) >= 2
    # up to 10 iterations, each decision the rule's answer to the recorded scores
    assert max(r["iteration"] for r in rows) <= 9
    assert data["stop_reason"] == "concluded" or max(r["iteration"] for r in rows) == 9
    assert [r["decision"] for r in rows] == replay(rows)
    # each recorded score is the authors' network on that iteration's image, as the schedule scores it
    evaluator = Evaluator(model, "cpu")
    soft = read_mask_as_authors(mask)
    scorer = evaluator.score_saved if schedule == "paper" else evaluator.score
    for row in rows[:3]:
        with Image.open(history / row["image_path"]) as image:
            assert row["score"] == pytest.approx(scorer(image.convert("RGB"), soft), abs=1e-6)
    scores = [r["score"] for r in rows]
    assert data["best_index"] == scores.index(max(scores))
    assert np.asarray(Image.open(out)).shape == np.asarray(Image.open(comp)).shape


def test_a_mask_the_authors_reader_would_misread_reaches_the_evaluator_as_zsharm_reads_it(fake_stage_two,
                                                                                       soft_mask_files, tmp_path):
    """A 0/1 label map reads as nothing through their `/ 255`; zsharm's boolean reading is scored instead."""
    from zsharm.io.masks import load_mask
    from zsharm.harmonizer import Harmonizer
    fake_stage_two["describer"] = describer = Describer()
    comp, soft = soft_mask_files
    labels = (np.asarray(Image.open(soft)) > 127).astype(np.uint8)
    Image.fromarray(labels).save(tmp_path / "labels.png")
    scores = Scores([0.5, 0.6])
    Harmonizer(pipe=object(), evaluator=scores, describer=describer, config=HarmonizeConfig.fast(size=64),
               progress=False)(comp, tmp_path / "labels.png", iterations=1)
    assert all(np.array_equal(c[1], load_mask(tmp_path / "labels.png")) for c in scores.calls)


@pytest.mark.parametrize("extra, problem", [(["--source", "cat bright", "--target", "cat dull"], "--source"),
                                            (["--no-evaluator"], "need the evaluator"),
                                            (["--source", "cat bright", "--target", "cat dull", "--candidates", "0"],
                                             "at least 1")])
def test_candidates_that_cannot_be_honoured_are_refused_before_any_model(soft_mask_files, tmp_path, capsys,
                                                                         monkeypatch, extra, problem):
    import zsharm.models
    monkeypatch.setattr(zsharm.models, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    comp, mask = soft_mask_files
    if "0" not in extra:
        extra = [*extra, "--candidates", "3"]
    code = main(["harmonize", str(comp), "--mask", str(mask), "--out", str(tmp_path / "out.png"), *extra, *QUICK])
    error = capsys.readouterr().err.strip()
    assert code == 2 and problem in error and "\n" not in error
    assert not (tmp_path / "out.png").exists()
