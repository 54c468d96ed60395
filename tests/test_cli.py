"""The `zsharm harmonize` command: errors in one line with nothing written, the loop, history, batch."""

import json
import os
import time

import numpy as np
import pytest
from conftest import make_composite
from PIL import Image

from zsharm.commands.cli import main

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


@pytest.mark.e2e  # a whole run on the tiny model
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


@pytest.mark.e2e  # a whole run on the tiny model
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


@pytest.mark.e2e  # a whole run on the tiny model
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
    code = main([str(a) for a in ["harmonize", "--batch", folder, "--out", out, "--no-evaluator", *QUICK]])
    captured = capsys.readouterr()
    assert code == 1  # one failure
    assert (out / "000.png").is_file() and (out / "001.png").is_file() and not (out / "002.png").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert "002" in json.dumps(summary)
    assert "002" in captured.err and "002" not in captured.out  # errors go to stderr, also under --quiet


@pytest.mark.e2e  # a whole run on the tiny model
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


# ---------------------------------------------------------------- bad input, tried as a new user would (#15)
# Each case must be refused in one line before any model is loaded: `load_pipeline` is replaced by a tripwire.


class ModelLoaded(Exception):
    """Raised by the tripwire: the command got as far as loading a model."""


@pytest.fixture()
def tripwire(monkeypatch):
    import zsharm.models

    def load_pipeline(*args, **kwargs):
        raise ModelLoaded(args[0] if args else kwargs.get("spec"))

    monkeypatch.setattr(zsharm.models, "load_pipeline", load_pipeline)


PROMPTS = ["--source", "cat bright", "--target", "cat winter dull"]
FAST = ["--model", "tiny", "--steps", "2", "--no-edges", "--quiet", "--no-evaluator"]


def save_exif_rotated(path, width, height):
    """A photo shown as width x height whose pixels are stored turned (EXIF orientation 6)."""
    shown, _ = make_composite(width=width, height=height)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(shown, 1))).save(path, exif=exif.tobytes())


def bad_case(name, tmp_path, comp, mask):
    """(arguments after `harmonize`, words the one-line error must hold) for each bad input of issue #15."""
    out = tmp_path / "out.png"
    base = [comp, "--mask", mask, "--out", out, *PROMPTS, *FAST, "--size", "64", "--device", "cpu"]

    def with_out(new_out, *extra):
        return [comp, "--mask", mask, "--out", new_out, *PROMPTS, *FAST, "--size", "64", "--device", "cpu", *extra]

    def replaced(option, value):
        args = list(base)
        args[args.index(option) + 1] = value
        return args

    if name == "jpeg output":
        return with_out(tmp_path / "out.jpg"), ["lossy", "background", "--allow-lossy"]
    if name == "cmyk jpeg to jpeg":
        Image.open(comp).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
        return [tmp_path / "cmyk.jpg", *with_out(tmp_path / "out.jpg")[1:]], ["lossy"]
    if name == "one-pixel mask":
        one = np.zeros((110, 150), np.uint8)
        one[50, 70] = 255
        Image.fromarray(one).save(mask)
        return base, ["too small for the work size", "--size"]
    if name == "tiny object in a big photo":
        Image.new("RGB", (3000, 2000), (90, 120, 150)).save(comp)
        small = np.zeros((2000, 3000), np.uint8)
        small[1000:1008, 1500:1508] = 255
        Image.fromarray(small).save(mask)
        return [comp, "--mask", mask, "--out", out, *PROMPTS, *FAST, "--device", "cpu"], ["too small"]
    if name == "device banana":
        return replaced("--device", "banana"), ["banana", "not a device"]
    if name == "device without that gpu":
        return replaced("--device", "cuda:99"), ["cuda:99"]
    if name == "output is a folder":
        (tmp_path / "result.png").mkdir()
        return with_out(tmp_path / "result.png"), ["folder"]
    if name == "output under a file":
        return with_out(tmp_path / "comp.png" / "out.png"), ["is a file"]
    if name == "rgba to jpeg":
        Image.open(comp).convert("RGBA").save(comp)
        return with_out(tmp_path / "out.jpg", "--allow-lossy"), ["alpha"]
    if name == "16-bit to webp":
        deep = (np.asarray(Image.open(comp)).astype(np.uint16) * 257)
        import cv2
        cv2.imwrite(str(comp), cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
        return with_out(tmp_path / "out.webp"), ["16-bit"]
    if name == "intermediates of several iterations":
        return [*base, "--iterations", "2", "--save-intermediates", tmp_path / "it.npz"], ["--iterations 1"]
    if name == "prompts without a shared object":
        return replaced("--target", "dog winter dull"), ["same object"]
    if name == "zero iterations":
        return [*base, "--iterations", "0"], ["--iterations"]
    if name == "output is the composite":
        return with_out(comp), ["composite", "original"]
    if name == "output is the mask":
        return with_out(mask), ["mask", "original"]
    if name == "float tiff":
        grey = np.asarray(Image.open(comp).convert("L"), np.float32) / 255
        Image.fromarray(grey, "F").save(tmp_path / "float.tif")
        return [tmp_path / "float.tif", *base[1:]], ["32-bit float"]
    if name == "mask in the stored orientation of an exif-rotated photo":
        save_exif_rotated(tmp_path / "rotated.png", 150, 110)  # shown 150 x 110, stored 110 x 150
        stored = np.zeros((150, 110), np.uint8)
        stored[40:90, 30:80] = 255
        Image.fromarray(stored).save(mask)
        return [tmp_path / "rotated.png", *base[1:]], ["EXIF", "orientation"]
    if name == "200-word prompt":
        return replaced("--source", "cat " + "bright " * 199), ["200 words", "77 tokens"]
    if name == "cyrillic word":
        return replaced("--source", "cat яркий"), ["Latin letters"]
    if name == "fp16 on cpu":
        return [*base, "--dtype", "fp16"], ["fp16", "fp32"]
    if name == "work size far above the model":
        return replaced("--size", "4096"), ["4096", "512"]
    if name == "work size above the image":
        return replaced("--size", "1024"), ["long side", "150"]
    if name == "huge seed":
        return [*base, "--seed", str(2 ** 70)], ["--seed"]
    if name == "missing evaluator file":
        return [*base[:-6], "--steps", "2", "--quiet", "--size", "64", "--device", "cpu",
                "--evaluator", tmp_path / "evaluator.pth"], ["evaluator", "no such file"]
    if name == "damaged evaluator file":
        import torch
        torch.save({"fc.weight": torch.zeros(2, 3)}, tmp_path / "evaluator.pth")
        data = (tmp_path / "evaluator.pth").read_bytes()
        (tmp_path / "evaluator.pth").write_bytes(data[: len(data) // 2])
        return [*base[:-6], "--steps", "2", "--quiet", "--size", "64", "--device", "cpu",
                "--evaluator", tmp_path / "evaluator.pth"], ["not a complete PyTorch checkpoint"]
    if name == "history is a file":
        return [*base, "--history", comp], ["--history", "file"]
    raise AssertionError(name)


BAD_CASES = ["jpeg output", "cmyk jpeg to jpeg", "one-pixel mask", "tiny object in a big photo", "device banana",
             "device without that gpu", "output is a folder", "output under a file", "rgba to jpeg",
             "16-bit to webp", "intermediates of several iterations", "prompts without a shared object",
             "zero iterations", "output is the composite", "output is the mask", "float tiff",
             "mask in the stored orientation of an exif-rotated photo", "200-word prompt", "cyrillic word",
             "fp16 on cpu", "work size far above the model", "work size above the image", "huge seed",
             "missing evaluator file", "damaged evaluator file", "history is a file"]


@pytest.mark.parametrize("name", BAD_CASES)
def test_bad_input_is_refused_in_one_line_before_any_model_loads(composite, tmp_path, capsys, tripwire, name):
    comp, mask = composite
    args, words = bad_case(name, tmp_path, comp, mask)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, err = run_cli(capsys, "harmonize", *args)  # ModelLoaded here: the check came too late
    assert code == 2, err
    assert err.startswith("zsharm: error: ") and "\n" not in err and len(err) < 400, err
    for word in words:
        assert word in err, (word, err)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing overwritten


def test_good_but_unusual_input_reaches_the_model(composite, tmp_path, capsys, tripwire):
    """Not refused: a mask painted green (read by its brightest channel, not its red one), an EXIF-rotated
    photo with a mask drawn on it as shown, an animated GIF (with a note that its first frame is used)."""
    comp, mask = composite
    green = np.zeros((110, 150, 3), np.uint8)
    green[..., 1] = np.asarray(Image.open(mask))
    Image.fromarray(green).save(tmp_path / "green.png")
    save_exif_rotated(tmp_path / "rotated.png", 150, 110)
    frames = [Image.open(comp).convert("P"), Image.open(comp).convert("L").convert("P")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    warned = ""
    for image, mask_file in [(comp, tmp_path / "green.png"), (tmp_path / "rotated.png", mask),
                             (tmp_path / "anim.gif", mask)]:
        with pytest.raises(ModelLoaded):
            run_cli(capsys, "harmonize", image, "--mask", mask_file, "--out", tmp_path / "out.png", *PROMPTS,
                    *FAST, "--size", "64", "--device", "cpu")
        warned += capsys.readouterr().err  # the zsharm logger's warnings, on stderr
    assert "2 frames" in warned and "first" in warned


@pytest.mark.e2e  # a whole run on the tiny model
def test_lossy_output_when_asked_says_how_many_background_pixels_change(composite, tmp_path, capsys):
    comp, mask = composite
    out = tmp_path / "out.jpg"
    code, err = run_cli(capsys, "harmonize", comp, "--mask", mask, "--out", out, "--allow-lossy", *PROMPTS, *FAST,
                        "--size", "64", "--device", "cpu")
    assert code == 0, err
    background = ~(np.asarray(Image.open(mask)) > 100)
    changed = (np.asarray(Image.open(out).convert("RGB")) != np.asarray(Image.open(comp))).any(axis=2)
    count = int((changed & background).sum())
    assert count > 0
    assert f"{count:,} of {int(background.sum()):,} background pixels" in err, err


@pytest.mark.e2e  # a whole run on the tiny model
def test_batch_prompts_on_the_command_line_win_over_caption_txt(tmp_path, capsys):
    folder = tmp_path / "batch"
    (folder / "composite").mkdir(parents=True)
    (folder / "mask").mkdir()
    image, mask = make_composite(width=96, height=80)
    Image.fromarray(image).save(folder / "composite" / "000.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "mask" / "000_mask.png")
    (folder / "caption.txt").write_text("astronaut bright,astronaut dusk\n")
    out = tmp_path / "out"
    code = main([str(a) for a in ["harmonize", "--batch", folder, "--out", out, *PROMPTS, *FAST, "--size", "64",
                                  "--device", "cpu"]])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "caption.txt" in captured.err  # said once, up front
    marker = json.loads((out / "000.done.json").read_text())
    assert (marker["source"], marker["target"], marker["prompts_from"]) == ("cat bright", "cat winter dull",
                                                                           "--source/--target")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompts"]["000"] == {"source": "cat bright", "target": "cat winter dull",
                                         "prompts_from": "--source/--target"}


@pytest.mark.e2e  # a whole run on the tiny model
def test_ctrl_c_during_the_final_save_leaves_no_partial_file(composite, tmp_path, capsys, monkeypatch):
    import zsharm.io.saving

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(zsharm.io.saving, "_encode", interrupted)
    comp, mask = composite
    code, err = run_cli(capsys, "harmonize", comp, "--mask", mask, "--out", tmp_path / "out.png", *PROMPTS,
                        *FAST, "--size", "64", "--device", "cpu")
    assert code == 130, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comp.png", "mask.png"]


def _ctrl_c():
    raise KeyboardInterrupt


def _sigterm():
    import signal
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises here; without one the process is already gone


@pytest.mark.parametrize("stop, code", [(_ctrl_c, 130), (_sigterm, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_while_building_the_tiny_model_leaves_no_temporary_folder(stop, code, composite, tmp_path,
                                                                                    capsys, monkeypatch):
    """Also: a temporary folder that a killed process left is swept on the next start."""
    import subprocess
    import sys

    import zsharm.models
    cache = tmp_path / "cache"
    monkeypatch.setenv("ZSHARM_CACHE", str(cache))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = cache / "models" / f"tiny-v{zsharm.models.TINY_VERSION}.tmp{dead.pid}"
    (stale / "unet").mkdir(parents=True)

    monkeypatch.setattr(zsharm.models, "publish_model_folder", lambda *args: stop())
    comp, mask = composite
    exit_code, err = run_cli(capsys, "harmonize", comp, "--mask", mask, "--out", tmp_path / "out.png", *PROMPTS,
                             *FAST, "--size", "64", "--device", "cpu")
    assert exit_code == code, err
    assert list((cache / "models").iterdir()) == []


def test_a_hub_model_that_cannot_be_fetched_says_why_and_what_to_do(composite, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    comp, mask = composite
    args = ["harmonize", comp, "--mask", mask, "--out", tmp_path / "out.png", *PROMPTS, *FAST, "--size", "64",
            "--device", "cpu"]
    args[args.index("tiny")] = "nobody-here/no-such-model"
    code, err = run_cli(capsys, *args)
    assert code == 2
    line = err.splitlines()[-1]
    assert line.startswith("zsharm: error: ") and "stacktrace" not in line
    for word in ("offline", "not cached", "--model tiny", "HF_HOME"):
        assert word in line, (word, line)


def test_missing_edge_weights_stop_the_command_before_any_model_loads(composite, tmp_path, capsys, monkeypatch,
                                                                      tripwire):
    monkeypatch.setenv("ZSHARM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ZSHARM_OFFLINE", "1")
    monkeypatch.delenv("ZSHARM_PIDINET_WEIGHTS", raising=False)
    comp, mask = composite
    code, err = run_cli(capsys, "harmonize", comp, "--mask", mask, "--out", tmp_path / "out.png", *PROMPTS,
                        "--model", "tiny", "--steps", "2", "--size", "64", "--device", "cpu", "--no-evaluator")
    assert code == 2, err
    assert "PiDiNet" in err and "ZSHARM_PIDINET_WEIGHTS" in err and "--no-edges" in err, err


def test_help_and_version_import_no_command_module():
    """`zsharm --help` listed every command by importing its module, and so torch: seconds before any output;
    and `resource` (POSIX only) at import made every command fail on Windows."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['resource'] = None\n"
            "from zsharm.commands.cli import main\n"
            "for argv in (['--help'], ['--version'], ['harmonize', '--help']):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "try: main(['bench', '--help'])\n"
            "except SystemExit: pass\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    for command in ("harmonize", "describe", "train-evaluator", "evaluate", "bench", "ablate", "figures"):
        assert command in done.stdout


def test_the_command_list_matches_each_modules_own_help():
    import argparse

    from zsharm.commands.cli import COMMANDS, build_parser
    parser = build_parser()
    actions = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in actions._choices_actions}
    assert helps == {name: summary for name, (_, summary) in COMMANDS.items()}


def test_a_prompt_of_few_words_but_too_many_tokens_is_refused_in_one_line(composite, tmp_path, capsys):
    comp, mask = composite
    long_words = "cat " + " ".join(["xylophonequartzwhisk"] * 20)  # 21 words, far more than 77 tokens
    code, err = run_cli(capsys, "harmonize", comp, "--mask", mask, "--out", tmp_path / "out.png", "--source",
                        long_words, "--target", "cat winter dull", *FAST, "--size", "64", "--device", "cpu")
    assert code == 2, err
    last = err.splitlines()[-1]
    assert "tokens long" in last and "77" in last and "xylophone" not in last, last
    assert "Token indices sequence length" not in err
    assert not (tmp_path / "out.png").exists()


def test_a_batch_where_no_image_can_be_harmonized_stops_before_any_model_loads(tmp_path, capsys, tripwire):
    folder = tmp_path / "batch"
    folder.mkdir()
    for name in ("a", "b"):
        image, _ = make_composite(width=96, height=80)
        Image.fromarray(image).save(folder / f"{name}.png")
        Image.new("L", (96, 80), 0).save(folder / f"{name}_mask.png")  # empty masks
    code, err = run_cli(capsys, "harmonize", "--batch", folder, "--out", tmp_path / "out", *PROMPTS, *FAST,
                        "--size", "64", "--device", "cpu")
    assert code == 2, err
    assert "none of the 2 images" in err and "no foreground" in err and "\n" not in err


def test_a_work_size_somewhat_above_the_image_is_allowed_with_a_warning(composite, tmp_path, capsys, tripwire):
    comp, mask = composite
    with pytest.raises(ModelLoaded):
        run_cli(capsys, "harmonize", comp, "--mask", mask, "--out", tmp_path / "out.png", *PROMPTS, *FAST,
                "--size", "256", "--device", "cpu")
    warned = capsys.readouterr().err
    assert "upsampled" in warned and "150 px" in warned


@pytest.mark.e2e  # a whole run on the tiny model
def test_quiet_prints_no_library_bars_or_warnings(composite, tmp_path, capfd):
    """--quiet: not diffusers' "Loading pipeline components" bar, nor any library's warning; only errors."""
    comp, mask = composite
    from zsharm.models import tiny_pipeline_dir
    tiny_pipeline_dir("tiny")  # built beforehand: building it is not what this test looks at
    capfd.readouterr()
    code = main([str(a) for a in ["harmonize", comp, "--mask", mask, "--out", tmp_path / "o.png", *PROMPTS, *FAST,
                                  "--size", "64", "--device", "cpu"]])
    captured = capfd.readouterr()
    assert code == 0 and (tmp_path / "o.png").is_file()
    assert captured.err == "" and captured.out == ""


def test_shard_without_batch_is_refused(composite, tmp_path, capsys):
    comp, mask = composite
    code, err = run_cli(capsys, "harmonize", comp, "--mask", mask, "--out", tmp_path / "o.png", *PROMPTS, *FAST,
                        "--shard", "0/4")
    assert code == 2 and "--batch" in err and "\n" not in err and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("option, value", [("--size", "100"), ("--steps", "0")])
def test_config_errors_name_the_option(composite, tmp_path, capsys, option, value):
    comp, mask = composite
    code, err = run_cli(capsys, "harmonize", comp, "--mask", mask, "--out", tmp_path / "o.png", *PROMPTS, *FAST,
                        option, value)
    assert code == 2 and option in err and "\n" not in err


def test_zsharm_offline_reaches_the_hubs_own_loaders(composite, tmp_path, capsys, monkeypatch):
    """ZSHARM_OFFLINE=1 turns on the hub's offline mode too, so diffusers and transformers never try the network
    (they retry for minutes without it)."""
    import os
    monkeypatch.setenv("ZSHARM_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    comp, mask = composite
    run_cli(capsys, "harmonize", comp, "--mask", mask, "--out", tmp_path / "o.png", *PROMPTS, *FAST, "--size", "99")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    monkeypatch.delenv("HF_HUB_OFFLINE")
