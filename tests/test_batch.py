"""Batch discovery, resuming, per-image failures and sharding, with a scripted `process_one`."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zsharm.batch import (
    BatchItem,
    find_batch_items,
    parse_shard,
    run_batch,
    select_shard,
    shard_from_env,
)
from zsharm.describe.description import Description
from zsharm.errors import ZsharmError


def write_image(path, value=100, size=(12, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def write_mask(path, size=(12, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size[1], size[0]), np.uint8)
    m[2:6, 3:9] = 255
    Image.fromarray(m).save(path)


def authors_layout(root, n=5, captions=True):
    for i in range(1, n + 1):
        write_image(root / "composite" / f"{i:03d}.png", 10 * i)
        write_mask(root / "mask" / f"{i:03d}_mask.png")
    if captions:
        objects = ["obj" + chr(96 + i) for i in range(1, n + 1)]  # obja, objb, ...: a prompt's words are letters
        lines = [f"{o} bright,{o} dark;{o} dim,{o} warm" for o in objects]
        (root / "caption.txt").write_text("\n".join(lines) + "\n")
    return root


class Harmonizer:
    """process_one: reads the composite and mask with PIL (so a corrupt file raises as in real use), writes
    the output, counts calls; `interrupt_at` raises KeyboardInterrupt on that call (1-based)."""

    def __init__(self, interrupt_at=None):
        self.calls = []
        self.interrupt_at = interrupt_at

    def __call__(self, item, out_path):
        self.calls.append(item.name)
        if len(self.calls) == self.interrupt_at:
            Image.new("RGB", (4, 4)).save(out_path)  # half-way through writing when the user hits Ctrl-C
            raise KeyboardInterrupt
        with Image.open(item.composite) as image:
            image = image.convert("RGB")
        with Image.open(item.mask) as mask:
            mask.load()
        image.save(out_path)
        return {"score": 0.5, "candidates": len(item.captions)}


# ---------------------------------------------------------------- discovery


def test_authors_layout_with_captions(tmp_path):
    root = authors_layout(tmp_path / "demo", n=12)
    items = find_batch_items(root)
    assert [i.name for i in items] == [f"{i:03d}" for i in range(1, 13)]
    assert all(i.mask == root / "mask" / f"{i.name}_mask.png" for i in items)
    assert items[10].captions == (Description.from_prompts("objk bright", "objk dark"),
                                  Description.from_prompts("objk dim", "objk warm"))
    assert items[10].captions[0].source == "objk bright" and items[10].captions[0].target == "objk dark"
    assert items[10].captions[0].object == "objk"  # stage 1's type: the object and each side's words


def test_a_caption_pair_that_makes_no_description_names_its_file_line_and_image(tmp_path):
    root = authors_layout(tmp_path / "demo", n=3, captions=False)
    (root / "caption.txt").write_text("cat bright,cat dim\ncat,dog dim\ncat dim,cat warm\n")
    with pytest.raises(ZsharmError, match=r"caption.txt:2 \(002.png\): .*same object name"):
        find_batch_items(root)
    unread = find_batch_items(root, read_captions=False)  # what --merge and evaluator training ask for
    assert [(i.name, i.captions) for i in unread] == [("001", ()), ("002", ()), ("003", ())]


def test_authors_layout_natural_order_and_pairing_by_order(tmp_path):
    # names that do not match are paired in natural order, as the authors do; 2 sorts before 10
    root = tmp_path / "d"
    for name in ("10", "2", "1"):
        write_image(root / "composite" / f"img{name}.jpg")
    for name in ("m10", "m2", "m1"):
        write_mask(root / "mask" / f"{name}.png")
    (root / "caption.txt").write_text("a x,a y\nb x,b y\nc x,c y\n")
    items = find_batch_items(root)
    assert [i.name for i in items] == ["img1", "img2", "img10"]
    assert [i.mask.stem for i in items] == ["m1", "m2", "m10"]
    assert [i.captions[0].source for i in items] == ["a x", "b x", "c x"]


def test_plain_folders(tmp_path):
    flat = tmp_path / "flat"
    write_image(flat / "a.png")
    write_mask(flat / "a_mask.png")
    write_image(flat / "b.jpg")  # no mask: found, reported when run
    items = find_batch_items(flat)
    assert [(i.name, i.mask.name if i.mask else None, i.captions) for i in items] == [
        ("a", "a_mask.png", ()), ("b", None, ())]
    split = tmp_path / "split"
    for name in ("x", "y"):
        write_image(split / "images" / f"{name}.png")
        write_mask(split / "masks" / f"{name}.png")
    assert [(i.name, i.mask) for i in find_batch_items(split)] == [
        ("x", split / "masks" / "x.png"), ("y", split / "masks" / "y.png")]


def test_bad_layouts_are_clear_errors(tmp_path):
    with pytest.raises(ZsharmError, match="does not exist"):
        find_batch_items(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZsharmError, match="no images"):
        find_batch_items(tmp_path / "empty")
    root = authors_layout(tmp_path / "demo", n=3, captions=False)
    (root / "caption.txt").write_text("a,b\n")
    with pytest.raises(ZsharmError, match="1 lines but there are 3 images"):
        find_batch_items(root)
    (root / "caption.txt").write_text("a,b\nno comma here\nc,d\n")
    with pytest.raises(ZsharmError, match="line 2"):
        find_batch_items(root)


# ---------------------------------------------------------------- running


def test_interrupted_batch_resumes_without_redoing_anything(tmp_path):
    root = authors_layout(tmp_path / "demo", n=6)
    items = find_batch_items(root)
    out = tmp_path / "out"
    first = Harmonizer(interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        run_batch(items, out, first, shard=(0, 1), progress=False)
    assert first.calls == ["001", "002", "003"]
    assert sorted(p.name for p in out.iterdir()) == [
        "001.done.json", "001.png", "002.done.json", "002.png", "summary.json"]  # nothing of 003 is left
    interrupted = json.loads((out / "summary.json").read_text())
    assert interrupted["interrupted"] is True and interrupted["done"] == ["001", "002"]

    second = Harmonizer()
    summary = run_batch(items, out, second, shard=(0, 1), progress=False)
    assert second.calls == ["003", "004", "005", "006"]  # nothing redone
    assert summary.skipped == ["001", "002"] and summary.done == ["003", "004", "005", "006"] and summary.ok
    marker = json.loads((out / "004.done.json").read_text())
    assert marker["score"] == 0.5 and marker["candidates"] == 2 and marker["output"] == "004.png"
    with Image.open(out / "004.png") as image:
        assert image.getpixel((0, 0)) == (40, 40, 40)

    third = Harmonizer()
    assert run_batch(items, out, third, shard=(0, 1), progress=False).skipped == [i.name for i in items]
    assert third.calls == []


def test_output_without_marker_is_redone(tmp_path):
    root = authors_layout(tmp_path / "demo", n=2)
    out = tmp_path / "out"
    run_batch(find_batch_items(root), out, Harmonizer(), progress=False, shard=(0, 1))
    (out / "002.done.json").unlink()  # e.g. killed between writing the image and its marker
    again = Harmonizer()
    run_batch(find_batch_items(root), out, again, progress=False, shard=(0, 1))
    assert again.calls == ["002"]


def test_corrupt_image_and_missing_mask_are_reported_and_the_rest_done(tmp_path):
    root = authors_layout(tmp_path / "demo", n=5)
    (root / "composite" / "003.png").write_bytes(b"this is not a png")
    (root / "mask" / "005_mask.png").unlink()
    items = find_batch_items(root)
    assert items[4].mask is None
    out = tmp_path / "out"
    harmonizer = Harmonizer()
    summary = run_batch(items, out, harmonizer, shard=(0, 1), progress=False)
    assert harmonizer.calls == ["001", "002", "003", "004"]
    assert summary.done == ["001", "002", "004"]
    assert [name for name, _ in summary.failed] == ["003", "005"]
    report = json.loads((out / "summary.json").read_text())
    assert [f["name"] for f in report["failed"]] == ["003", "005"]
    assert "cannot identify image file" in report["failed"][0]["error"]
    assert report["failed"][1]["error"] == "no mask found for 005.png"
    assert all("\n" not in f["error"] for f in report["failed"])
    assert not (out / "003.png").exists() and not (out / "003.done.json").exists()
    assert report["remaining"] == 0 and report["interrupted"] is False


def test_a_bug_stops_the_batch(tmp_path):
    root = authors_layout(tmp_path / "demo", n=2)

    def buggy(item, out_path):
        raise RuntimeError("a bug, not a bad image")

    with pytest.raises(RuntimeError):
        run_batch(find_batch_items(root), tmp_path / "out", buggy, shard=(0, 1), progress=False)


# ---------------------------------------------------------------- shards


def test_shards_partition_the_items(tmp_path):
    items = [BatchItem(f"im{i}", tmp_path / f"im{i}.png", tmp_path / f"im{i}_mask.png") for i in range(11)]
    for n in (1, 2, 3, 4, 11, 13):
        shards = [select_shard(items, (i, n)) for i in range(n)]
        names = [item.name for shard in shards for item in shard]
        assert sorted(names) == sorted(i.name for i in items) and len(names) == len(set(names))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # deterministic whatever the input order
    assert select_shard(items[::-1], (1, 3)) == select_shard(items, (1, 3))


def test_sharded_runs_share_one_output_folder(tmp_path):
    root = authors_layout(tmp_path / "demo", n=7)
    out = tmp_path / "out"
    calls = []
    for i in range(3):
        harmonizer = Harmonizer()
        run_batch(find_batch_items(root), out, harmonizer, shard=(i, 3), progress=False)
        calls += harmonizer.calls
        assert (out / f"summary.shard{i}of3.json").is_file()
    assert sorted(calls) == [f"{i:03d}" for i in range(1, 8)]
    assert len(list(out.glob("*.done.json"))) == 7


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 3/4 ") == (3, 4)
    for bad, message in (("4/4", "0..3"), ("1/0", "at least 1"), ("a/b", "I/N"), ("1", "I/N"), ("-1/2", "I/N")):
        with pytest.raises(ZsharmError, match=message):
            parse_shard(bad)


def test_shard_from_launcher_variables(tmp_path):
    assert shard_from_env({}) == (0, 1)
    assert shard_from_env({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}) == (2, 4)
    assert shard_from_env({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}) == (1, 2)
    with pytest.raises(ZsharmError, match="RANK"):
        shard_from_env({"RANK": "5", "WORLD_SIZE": "2"})


def test_run_batch_reads_the_shard_from_the_environment(tmp_path, monkeypatch):
    root = authors_layout(tmp_path / "demo", n=4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    harmonizer = Harmonizer()
    summary = run_batch(find_batch_items(root), tmp_path / "out", harmonizer, progress=False)
    assert summary.shard == (1, 2) and harmonizer.calls == ["002", "004"]


def test_prompts_named_on_the_command_line_win_over_caption_txt():
    from zsharm.batch import prompts_for
    item = BatchItem("a", Path("a.png"), Path("a_mask.png"), (Description.from_prompts("cat bright", "cat dusk"),))
    assert prompts_for(item, "dog dim", "dog snowy") == (None, "--source/--target")
    assert prompts_for(item, None, None) == ([Description.from_prompts("cat bright", "cat dusk")], "caption.txt")
    assert prompts_for(BatchItem("b", Path("b.png"), Path("b_mask.png")), None, None) == (None, "vlm")
