"""Issue 22: nothing lost, nothing stuck. Outputs never replace inputs, leftover claims never block, SIGTERM and
SIGHUP leave what Ctrl-C leaves, and every command checks its inputs, prompts, outputs and downloads before the
first model load or endpoint call (the models here are replaced by functions that fail the test if called)."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from zsharm.batch import find_batch_items, merge_summaries, run_batch
from zsharm.commands.cli import main
from zsharm.distributed import claim_path
from zsharm.errors import ZsharmError

REPO = Path(__file__).resolve().parents[1]


def write_image(path, value=100, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def write_mask(path, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size[1], size[0]), np.uint8)
    m[12:36, 16:48] = 255
    Image.fromarray(m).save(path)


def plain_pairs(root, names=("a", "b")):
    for k, name in enumerate(names):
        write_image(root / f"{name}.png", 40 + 30 * k)
        write_mask(root / f"{name}_mask.png")
    return root


def copy_items(item, out_path):
    out_path.write_bytes(item.composite.read_bytes())
    return {}


@pytest.fixture
def no_models(monkeypatch):
    """Any model load or describer build fails the test: the refusal must come first."""
    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")
    import zsharm.commands.describe
    import zsharm.decide.evaluator
    import zsharm.models
    monkeypatch.setattr(zsharm.models, "load_pipeline", loaded)
    monkeypatch.setattr(zsharm.decide.evaluator, "load_evaluator", loaded)
    monkeypatch.setattr(zsharm.commands.describe, "describer_from_args", loaded)
    return loaded


def refused(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # warnings may come first
    assert err.startswith("zsharm: error: "), err
    return err


# ---------------------------------------------------------------- 1. data loss


def test_a_batch_whose_output_folder_is_its_input_folder_is_refused_and_nothing_is_overwritten(tmp_path, capsys,
                                                                                               no_models):
    folder = plain_pairs(tmp_path / "pairs")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    err = refused(capsys, ["harmonize", "--batch", str(folder), "--out", str(folder), "--source", "cat bright",
                           "--target", "cat dim", "--no-evaluator", "--no-edges"])
    assert "would overwrite the input" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_batch_writing_into_the_authors_composite_folder_is_refused_also_through_run_batch(tmp_path, capsys,
                                                                                            no_models):
    root = tmp_path / "demo"
    write_image(root / "composite" / "001.png")
    write_mask(root / "mask" / "001.png")
    before = (root / "composite" / "001.png").read_bytes()
    refused(capsys, ["harmonize", "--batch", str(root), "--out", str(root / "composite"), "--source", "cat bright",
                     "--target", "cat dim", "--no-evaluator", "--no-edges"])
    with pytest.raises(ZsharmError, match="would overwrite the input"):
        run_batch(find_batch_items(root), root / "composite", copy_items, shard=(0, 1), progress=False)
    assert (root / "composite" / "001.png").read_bytes() == before


# ---------------------------------------------------------------- 2. pairing is a total order


def _authors_layout_in_order(root, names, order):
    """composites, masks (paired by order: their names do not match) and caption lines, created in `order`."""
    for k in order:
        write_image(root / "composite" / f"{names[k]}.png", 20 + k)
    for k in reversed(order):
        write_mask(root / "mask" / f"m_{names[k]}.png")
    ranked = sorted(names, key=lambda n: (n.lower(), n))  # any fixed order: the lines are what is compared
    objects = {n: "obj" + chr(97 + k % 26) * (k // 26 + 1) for k, n in enumerate(ranked)}  # letters: a prompt's words
    (root / "caption.txt").write_text("".join(f"{objects[n]} bright,{objects[n]} dim\n" for n in ranked))


def _pairing(root):
    return [(i.composite.name, i.mask.name, i.captions) for i in find_batch_items(root)]


def test_images_whose_natural_names_tie_get_the_same_caption_line_whatever_order_they_were_made_in(
        tmp_path, monkeypatch):
    names = ["x1", "x01", "x001"]
    _authors_layout_in_order(tmp_path / "one", names, [0, 1, 2])
    _authors_layout_in_order(tmp_path / "two", names, [2, 1, 0])
    first = _pairing(tmp_path / "one")
    original = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(list(original(self))[::-1]))  # the other listing order
    assert _pairing(tmp_path / "two") == first


TIED_NAMES = ["x1", "x01", "x001", "X1", "a", "A", "b2", "B02", "c10", "c9"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(st.sampled_from(TIED_NAMES), min_size=2, max_size=6, unique_by=str.lower),
       seed=st.integers(0, 2 ** 32 - 1), data=st.data())
def test_batch_pairing_of_composites_masks_and_caption_lines_is_independent_of_directory_order(
        tmp_path_factory, monkeypatch, names, seed, data):
    # unique_by lower: a case-insensitive file system would merge X1 and x1; ties stay (x1, x01, x001...)
    pairings = []
    for attempt in range(2):
        order = data.draw(st.permutations(range(len(names))))
        root = tmp_path_factory.mktemp("batch")
        _authors_layout_in_order(root, names, list(order))
        listing = random.Random(seed + attempt)
        original = Path.iterdir

        def shuffled(self, original=original, listing=listing):
            entries = list(original(self))
            listing.shuffle(entries)  # the directory hands its entries back in any order it likes
            return iter(entries)
        with monkeypatch.context() as patch:
            patch.setattr(Path, "iterdir", shuffled)
            pairings.append(_pairing(root))
    assert pairings[0] == pairings[1]


# ---------------------------------------------------------------- 3. claims that jam


@pytest.mark.parametrize("leftover", [b"", b"{\"host\": ", b"\x00garbage", b"[]"],
                         ids=["empty", "cut short", "garbage", "not an object"])
def test_an_empty_or_garbled_claim_does_not_block_a_rerun_or_the_merge(tmp_path, leftover):
    folder = plain_pairs(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    out.mkdir()
    run_batch(find_batch_items(folder), out, copy_items, shard=(0, 2), progress=False)  # "a" only
    claim_path(out, "b").write_bytes(leftover)
    merged = merge_summaries(out, find_batch_items(folder))
    assert merged["running"] == [] and merged["remaining"] == ["b"]
    summary = run_batch(find_batch_items(folder), out, copy_items, shard=(0, 1), progress=False)
    assert summary.skipped == ["a"] and summary.done == ["b"] and summary.busy == []
    assert not list(out.glob("*.claim")) and not list(out.glob(".*"))


def test_a_claim_that_cannot_be_written_is_the_error_reported_not_the_summary(tmp_path, monkeypatch):
    import zsharm.batch
    import zsharm.distributed
    folder = plain_pairs(tmp_path / "in", ["a"])

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def summary_too(path, data):
        raise ZsharmError(f"cannot save {path}: {os.strerror(errno.ENOSPC)}")
    monkeypatch.setattr(zsharm.distributed.os, "link", disk_full)
    monkeypatch.setattr(zsharm.batch, "write_json", summary_too)
    with pytest.raises(ZsharmError, match=r"cannot claim a: .*a\.claim"):
        run_batch(find_batch_items(folder), tmp_path / "out", copy_items, shard=(0, 1), progress=False)
    assert not list((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- 4. SIGTERM, SIGHUP


STOPPED_BATCH = textwrap.dedent("""
    import sys, time
    import zsharm.commands.harmonize as command
    from zsharm.batch import find_batch_items, run_batch

    def slow(item, out_path):
        out_path.write_bytes(b"half")
        print("started", flush=True)
        time.sleep(120)

    def batch_command(args):
        run_batch(find_batch_items(args.batch), args.out, slow, shard=(0, 1), progress=False)
    command.cli_harmonize = batch_command
    from zsharm.commands.cli import main
    sys.exit(main(["harmonize", "--batch", sys.argv[1], "--out", sys.argv[2]]))
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_leave_what_ctrl_c_leaves(tmp_path, signum):
    folder = plain_pairs(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-c", STOPPED_BATCH, str(folder), str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "started"
        child.send_signal(signum)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 128 + signum, err
    assert f"interrupted ({signal.Signals(signum).name})" in err
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]  # no claim, no half-written image
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True


# ---------------------------------------------------------------- 5. outputs checked before the work


def test_evaluate_refuses_an_output_that_is_a_file_before_loading_a_model(tmp_path, capsys, no_models):
    data = plain_pairs(tmp_path / "data", ["a"])
    write_image(data / "a_real.png")
    (tmp_path / "taken").write_text("not a folder")
    err = refused(capsys, ["evaluate", str(data), "--methods", "zsharm", "--out", str(tmp_path / "taken"),
                           "--model", "tiny", "--source", "cat bright", "--target", "cat dim"])
    assert "taken is a file" in err


def test_describe_refuses_a_caption_file_it_cannot_write_before_asking_the_vlm(tmp_path, capsys, no_models):
    folder = plain_pairs(tmp_path / "pairs", ["a"])
    (tmp_path / "file").write_text("")
    err = refused(capsys, ["describe", str(folder), "--out", str(tmp_path / "file" / "x.txt")])
    assert "is a file, not a folder" in err


def test_train_evaluator_refuses_a_checkpoint_it_cannot_write_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = refused(capsys, ["train-evaluator", str(tmp_path), "--out", str(tmp_path / "file" / "e.safetensors")])
    assert "is a file, not a folder" in err


# ---------------------------------------------------------------- 6. names


def test_an_image_named_like_a_summary_does_not_break_the_merge(tmp_path):
    folder = plain_pairs(tmp_path / "in", ["summary_beach", "summary"])
    out = tmp_path / "out"
    run_batch(find_batch_items(folder), out, copy_items, shard=(0, 1), progress=False)
    for _ in range(2):  # and again over the merged summary.json
        merged = merge_summaries(out, find_batch_items(folder))
        assert merged["done"] == ["summary", "summary_beach"] and merged["failed"] == []


# ---------------------------------------------------------------- 7, 8. caption files


def test_a_caption_file_saved_by_notepad_with_a_byte_order_mark_and_crlf_reads_as_its_text(tmp_path):
    folder = plain_pairs(tmp_path / "pairs", ["a", "b"])
    (folder / "caption.txt").write_bytes("astronaut bright,astronaut dim\r\ncat warm,cat cold\r\n"
                                         .encode("utf-8-sig"))
    from zsharm.config import HarmonizeConfig
    from zsharm.validate import check_batch_items
    items = find_batch_items(folder)
    assert (items[0].captions[0].source, items[0].captions[0].target) == ("astronaut bright", "astronaut dim")
    check_batch_items(items, HarmonizeConfig(), (0, 1), tmp_path / "out")


@pytest.mark.parametrize("line", ["astronaut bright!,astronaut dim", "космонавт яркий,космонавт тусклый"],
                         ids=["punctuation", "cyrillic"])
def test_caption_file_prompts_pass_the_same_check_as_typed_ones_before_any_model_loads(tmp_path, capsys,
                                                                                      no_models, line):
    folder = plain_pairs(tmp_path / "pairs", ["a", "b"])
    (folder / "caption.txt").write_text(f"cat warm,cat cold\n{line}\n", encoding="utf-8")
    err = refused(capsys, ["harmonize", "--batch", str(folder), "--out", str(tmp_path / "out"), "--no-evaluator",
                           "--no-edges"])
    assert "caption.txt:2 (b.png)" in err
    # the very words the typed prompts are refused with
    from zsharm.validate import check_prompts
    with pytest.raises(ZsharmError) as typed:
        check_prompts(*line.split(","))
    assert str(typed.value) in err


def test_the_python_api_checks_caption_candidates_like_typed_prompts(tmp_path):
    from zsharm.harmonizer import Harmonizer
    harmonizer = Harmonizer.__new__(Harmonizer)  # no model: the refusal comes before any is used
    harmonizer.pipe, harmonizer.config = None, None
    with pytest.raises(ZsharmError, match="'bright!'"):
        harmonizer(tmp_path / "none.png", tmp_path / "none.png", candidates=[("astronaut bright!", "astronaut dim")])


# ---------------------------------------------------------------- 9. the atomic writer's clean-up


def test_the_first_error_is_reported_when_the_atomic_writers_clean_up_fails_too(tmp_path, monkeypatch):
    from zsharm.io.files import atomic_path
    original = Path.unlink

    def read_only(self, missing_ok=False):
        if ".tmp" in self.name:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return original(self, missing_ok=missing_ok)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(PermissionError, match="the first error"):
        with atomic_path(tmp_path / "x.png"):
            raise PermissionError("the first error")


def test_a_figure_that_cannot_be_saved_in_a_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch):
    import matplotlib.figure
    original = Path.unlink

    def refuse_save(self, *args, **kwargs):  # what a read-only folder does (root is not refused by a chmod)
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]))

    def refuse_unlink(self, missing_ok=False):
        if ".tmp" in self.name:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return original(self, missing_ok=missing_ok)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", refuse_save)
    monkeypatch.setattr(Path, "unlink", refuse_unlink)
    err = refused(capsys, ["figures", "--out", str(tmp_path / "figs"), "--only", "pipeline"])
    assert "read-only file system" in err.lower() and not list(tmp_path.glob("**/*.png"))


# ---------------------------------------------------------------- 10. a missing VLM offline


def test_a_vlm_missing_offline_is_refused_before_stable_diffusion_loads(tmp_path, capsys, no_models, monkeypatch):
    monkeypatch.setenv("ZSHARM_OFFLINE", "1")
    write_image(tmp_path / "c.png")
    write_mask(tmp_path / "m.png")
    err = refused(capsys, ["harmonize", str(tmp_path / "c.png"), "--mask", str(tmp_path / "m.png"), "--out",
                           str(tmp_path / "o.png"), "--vlm", "nobody-here/no-such-vlm", "--no-evaluator",
                           "--no-edges"])
    assert "not in the Hugging Face cache" in err and "--source/--target" in err


# ---------------------------------------------------------------- 11. the Python API


def test_the_python_api_refuses_a_mask_of_the_wrong_size_before_loading_the_pipeline(tmp_path, no_models):
    import zsharm
    write_image(tmp_path / "c.png", size=(64, 48))
    write_mask(tmp_path / "m.png", size=(32, 32))
    with pytest.raises(ZsharmError, match="32x32"):
        zsharm.harmonize(tmp_path / "c.png", tmp_path / "m.png", "cat bright", "cat dim", model="tiny",
                         evaluator=None)


# ---------------------------------------------------------------- 12. --history


def test_history_into_a_folder_of_an_earlier_run_is_refused_unless_overwrite(tmp_path, capsys, no_models):
    write_image(tmp_path / "c.png")
    write_mask(tmp_path / "m.png")
    history = tmp_path / "history"
    history.mkdir()
    write_image(history / "iter01_cand0.png")
    argv = ["harmonize", str(tmp_path / "c.png"), "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "o.png"),
            "--source", "cat bright", "--target", "cat dim", "--no-evaluator", "--no-edges", "--history", str(history)]
    assert "--overwrite" in refused(capsys, argv)
    with pytest.raises(AssertionError, match="a model was loaded"):  # allowed: it goes on to the model
        main(argv + ["--overwrite"])


def test_a_new_history_leaves_nothing_of_the_earlier_run_beside_it(tmp_path):
    from zsharm.decide.history import History
    write_image(tmp_path / "iter01_cand0.png")
    (tmp_path / "history.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("the user's own")
    History(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------- 13. evaluate without ground truth


def test_evaluate_on_a_dataset_without_ground_truth_says_so_beside_the_empty_metrics(tmp_path, capsys):
    data = plain_pairs(tmp_path / "data", ["a"])
    assert main(["evaluate", str(data), "--methods", "copy-paste", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "the dataset has no ground truth" in capsys.readouterr().err


# ---------------------------------------------------------------- 14. describe FOLDER --out new.txt


def test_describing_a_folder_into_a_new_file_ignores_the_old_caption_file_it_replaces(tmp_path, monkeypatch):
    from zsharm.describe.description import Description
    folder = plain_pairs(tmp_path / "pairs", ["a", "b"])
    (folder / "caption.txt").write_text("cat warm,cat cold\n")  # one line for two images: the outdated file

    class Given:
        def describe(self, image, mask, n, name):
            return [Description.from_prompts("cat bright", "cat dim")]

        def release(self):
            pass
    monkeypatch.setattr("zsharm.commands.describe.describer_from_args", lambda args: Given())
    assert main(["describe", str(folder), "--out", str(tmp_path / "new.txt"), "--quiet"]) == 0
    assert (tmp_path / "new.txt").read_text() == "cat bright,cat dim\ncat bright,cat dim\n"


# ---------------------------------------------------------------- 15. --mask = the composite


def test_a_mask_that_is_the_composite_itself_is_refused(tmp_path, capsys, no_models):
    write_image(tmp_path / "c.png")
    os.link(tmp_path / "c.png", tmp_path / "same.png")
    for mask in ("c.png", "same.png"):
        err = refused(capsys, ["harmonize", str(tmp_path / "c.png"), "--mask", str(tmp_path / mask), "--out",
                               str(tmp_path / "o.png"), "--source", "cat bright", "--target", "cat dim",
                               "--no-evaluator", "--no-edges"])
        assert "is the composite itself" in err


# ---------------------------------------------------------------- 16. the smaller ones


def test_a_cache_that_is_a_file_is_refused_first_naming_zsharm_cache(tmp_path, capsys, no_models, monkeypatch):
    (tmp_path / "cachefile").write_text("")
    monkeypatch.setenv("ZSHARM_CACHE", str(tmp_path / "cachefile"))
    write_image(tmp_path / "c.png")
    write_mask(tmp_path / "m.png")
    err = refused(capsys, ["harmonize", str(tmp_path / "c.png"), "--mask", str(tmp_path / "m.png"), "--out",
                           str(tmp_path / "o.png"), "--source", "cat bright", "--target", "cat dim",
                           "--no-evaluator", "--no-edges"])
    assert "ZSHARM_CACHE" in err


def test_a_cache_that_cannot_be_written_is_refused_first_naming_zsharm_cache(tmp_path, capsys, no_models,
                                                                            monkeypatch):
    # below a file: no folder can be made there, even by root (a read-only folder would not stop root in CI)
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("ZSHARM_CACHE", str(tmp_path / "afile" / "cache"))
    write_image(tmp_path / "c.png")
    write_mask(tmp_path / "m.png")
    err = refused(capsys, ["harmonize", str(tmp_path / "c.png"), "--mask", str(tmp_path / "m.png"), "--out",
                           str(tmp_path / "o.png"), "--source", "cat bright", "--target", "cat dim",
                           "--no-evaluator", "--no-edges"])
    assert "not writable" in err and "ZSHARM_CACHE" in err


def test_a_png_with_a_two_megabyte_icc_profile_is_read(tmp_path):
    from zsharm.io.pictures import load_image
    profile = np.random.default_rng(0).bytes(2 * 1024 * 1024)  # random: it does not compress below PIL's 1 MB
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "icc.png", icc_profile=profile)
    picture = load_image(tmp_path / "icc.png")
    assert picture.icc_profile == profile


def test_evaluate_quiet_loads_the_pipeline_without_progress_bars(tmp_path, monkeypatch, capsys):
    import zsharm.models
    asked = {}

    def load_pipeline(*args, **kwargs):
        asked.update(kwargs)
        raise ZsharmError("stop here")
    monkeypatch.setattr(zsharm.models, "load_pipeline", load_pipeline)
    data = plain_pairs(tmp_path / "data", ["a"])
    write_image(data / "a_real.png")
    refused(capsys, ["evaluate", str(data), "--methods", "zsharm", "--out", str(tmp_path / "out"), "--model", "tiny",
                     "--source", "cat bright", "--target", "cat dim", "--quiet"])
    assert asked["progress"] is False


def test_evaluator_weights_are_written_with_the_permissions_of_every_other_output(tmp_path):
    from zsharm.decide.evaluator import HarmonyClassifier, save_checkpoint
    from zsharm.io.files import write_json
    old = os.umask(0o022)
    try:
        save_checkpoint(HarmonyClassifier.from_arch("tiny"), tmp_path / "e.safetensors", size=32)
        write_json(tmp_path / "other.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "e.safetensors").stat().st_mode & 0o777 == (tmp_path / "other.json").stat().st_mode & 0o777


def test_a_read_only_file_system_is_called_so_not_a_missing_permission(tmp_path, monkeypatch):
    import zsharm.io.files as files

    class ReadOnly:
        f_flag = os.ST_RDONLY
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)
    monkeypatch.setattr(files.os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(ZsharmError, match="read-only file system"):
        files.check_writable(tmp_path / "x.png")


def test_training_warns_when_its_best_checkpoint_is_no_better_than_chance(tmp_path, monkeypatch, caplog):
    import zsharm.decide.training as training
    for stem in ("a0001_1_1", "a0002_1_1", "a0003_1_1"):
        for folder, name in (("composite_images", stem + ".jpg"), ("masks", stem[:-2] + ".png"),
                             ("real_images", stem[:-4] + ".jpg")):
            image = Image.new("RGB", (8, 8))
            if folder == "masks":
                image.paste((255, 255, 255), (2, 2, 6, 6))
            (tmp_path / "HAdobe5k" / folder).mkdir(parents=True, exist_ok=True)
            image.save(tmp_path / "HAdobe5k" / folder / name)
    monkeypatch.setattr(training, "evaluate_classifier",
                        lambda *args: {"val_loss": 0.7, "val_accuracy": 0.5, "val_auc": 0.0})
    with caplog.at_level("WARNING", logger="zsharm"):
        training.train_evaluator(tmp_path, tmp_path / "e.safetensors", epochs=1, batch_size=4, size=32, arch="tiny",
                                 device="cpu", val_fraction=0.34, progress=False)
    assert "ROC-AUC is 0.000, no better than chance" in caplog.text


def test_evaluate_checks_the_prompts_it_will_use_before_loading_the_pipeline(tmp_path, capsys, no_models):
    data = plain_pairs(tmp_path / "data", ["a"])
    write_image(data / "a_real.png")
    err = refused(capsys, ["evaluate", str(data), "--methods", "zsharm", "--out", str(tmp_path / "out"), "--model",
                           "tiny", "--source", "astronaut bright!", "--target", "astronaut dim"])
    assert "'bright!'" in err
