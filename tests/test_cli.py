"""The `zsharm harmonize` command: errors in one line with nothing written, the loop, history, batch."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import make_composite
from zsharm.cli import main

QUICK = ["--model", "tiny", "--steps", "2", "--size", "64", "--no-edges", "--quiet", "--device", "cpu"]


@pytest.fixture()
def composite(tmp_path):
    image, mask = make_composite(width=150, height=110)
    Image.fromarray(image).save(tmp_path / "comp.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    return tmp_path / "comp.png", tmp_path / "mask.png"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("problem", ["no mask", "size", "empty", "full", "unreadable", "format", "half prompt"])
def test_bad_input_one_line_error_and_no_output(composite, tmp_path, capsys, problem):
    comp, mask = composite
    out = tmp_path / ("out.xyz" if problem == "format" else "out.png")
    args = ["harmonize", comp, "--mask", mask, "--out", out, "--source", "cat bright", "--target", "cat dull"]
    if problem == "no mask":
        args = ["harmonize", comp, "--out", out, "--source", "cat bright", "--target", "cat dull"]
    elif problem == "size":
        Image.new("L", (64, 64), 255).save(mask)
    elif problem == "empty":
        Image.new("L", (150, 110), 0).save(mask)
    elif problem == "full":
        Image.new("L", (150, 110), 255).save(mask)
    elif problem == "unreadable":
        comp.write_bytes(b"not an image at all")
    elif problem == "half prompt":
        args = ["harmonize", comp, "--mask", mask, "--out", out, "--source", "cat bright"]
    code, err = run_cli(capsys, *args, *QUICK)
    assert code == 2
    assert err.startswith("zsharm: error: ") and "\n" not in err, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]


def test_harmonize_with_history_keeps_input_size(composite, tmp_path, capsys):
    comp, mask = composite
    out, history = tmp_path / "out.png", tmp_path / "hist"
    code, err = run_cli(capsys, "harmonize", comp, "--mask", mask, "--out", out, "--source", "cat bright",
                        "--target", "cat winter dull", "--no-evaluator", "--iterations", "2", "--history", history,
                        *QUICK)
    assert code == 0, err
    result, original = np.asarray(Image.open(out)), np.asarray(Image.open(comp))
    m = np.asarray(Image.open(mask)) > 100
    assert result.shape == original.shape
    assert np.array_equal(result[~m], original[~m])
    record = json.loads((history / "history.json").read_text())
    assert len(record["iterations"]) == 2
    assert (history / "contact_sheet.png").is_file()


def test_the_decision_loop_from_the_command_line(composite, tmp_path, capsys):
    comp, mask = composite
    out, history = tmp_path / "out.png", tmp_path / "hist"
    with pytest.warns(UserWarning):
        code, err = run_cli(capsys, "harmonize", comp, "--mask", mask, "--out", out, "--source", "cat bright",
                            "--target", "cat winter dull", "--evaluator", "random", "--iterations", "4",
                            "--history", history, *QUICK)
    assert code == 0, err
    record = json.loads((history / "history.json").read_text())
    scores = [r["score"] for r in record["iterations"]]
    assert len(scores) >= 3 and all(0 <= s <= 1 for s in scores)
    best = max(range(len(scores)), key=lambda i: scores[i])
    saved = np.asarray(Image.open(out))
    assert saved.shape == np.asarray(Image.open(comp)).shape
    assert record["iterations"][best]["decision"] in ("continue", "regenerate", "conclude", "stop")


def test_batch_reports_a_bad_image_and_does_the_rest(tmp_path, capsys):
    folder = tmp_path / "batch"
    (folder / "composite").mkdir(parents=True)
    (folder / "mask").mkdir()
    for i in range(2):
        image, mask = make_composite(width=96, height=80, seed=i)
        Image.fromarray(image).save(folder / "composite" / f"00{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask" / f"00{i}_mask.png")
    (folder / "composite" / "002.png").write_bytes(b"broken")
    Image.new("L", (96, 80), 255).save(folder / "mask" / "002_mask.png")
    (folder / "caption.txt").write_text("cat bright,cat winter\n" * 3)
    out = tmp_path / "out"
    code, err = run_cli(capsys, "harmonize", "--batch", folder, "--out", out, "--no-evaluator", *QUICK)
    assert code == 1  # one failure
    assert (out / "000.png").is_file() and (out / "001.png").is_file() and not (out / "002.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert "002" in json.dumps(summary)


def test_without_prompts_the_vlm_describes(composite, tmp_path, capsys, monkeypatch):
    """Stage 1 feeds stage 2: a local OpenAI-compatible endpoint answers, the description reaches the prompts."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    answers = iter(["Sure! Here you go: cat & (foreground) bright & (background) dull winter",  # prose: refused
                    "cat & (foreground) bright & (background) dull winter"] * 4)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": next(answers)}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("ZSHARM_VLM_API_KEY", "test-key")
    comp, mask = composite
    out, history = tmp_path / "out.png", tmp_path / "hist"
    try:
        code, err = run_cli(capsys, "harmonize", comp, "--mask", mask, "--out", out, "--no-evaluator",
                            "--base-url", f"http://127.0.0.1:{server.server_port}/v1", "--vlm-model", "test",
                            "--no-vlm-cache", "--history", history, *QUICK)
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, err
    record = json.loads((history / "history.json").read_text())
    assert record["iterations"][0]["source"] == "cat bright"
    assert record["iterations"][0]["target"] == "cat dull winter"  # words in dictionary order
    assert out.is_file()
