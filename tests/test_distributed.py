"""Many processes over one folder: ranks and devices from the launchers' variables, atomic claims, merged
summaries. The multi-process tests start real processes with a cheap `process_one` (copy the composite)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from zsharm import distributed
from zsharm.batch import find_batch_items, merge_summaries, run_batch
from zsharm.distributed import ProcessPlace, claim_path, process_place, try_claim
from zsharm.errors import ZsharmError
from zsharm.models import default_device

from test_batch import authors_layout

REPO = Path(__file__).resolve().parents[1]

# One launched process: run_batch over the folder with a process_one that copies the composite, sleeps a little
# (so launches overlap) and appends its name to a log shared by all processes (O_APPEND: one line per write).
# Each process says it is ready and waits for the others, so none finishes before another has started.
WORKER = """
import os, pathlib, shutil, sys, time
from zsharm.batch import find_batch_items, run_batch
folder, out, log = sys.argv[1:4]
pathlib.Path(log + f".ready{os.getpid()}").touch()
while not os.path.exists(log + ".go"):
    time.sleep(0.01)
def process_one(item, out_path):
    shutil.copyfile(item.composite, out_path)
    time.sleep(0.1)
    with open(log, "a") as f:
        f.write(f"{item.name} {os.environ.get('RANK', '-')} {os.getpid()}\\n")
    return {}
run_batch(find_batch_items(folder), out, process_one, progress=False)
"""


def launch(folder, out, log, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    environ.update(PYTHONPATH=str(REPO), **{k: str(v) for k, v in env.items()})
    return subprocess.Popen([sys.executable, "-c", WORKER, str(folder), str(out), str(log)], env=environ)


def finished(processes):
    log = Path(processes[0].args[-1])
    deadline = time.monotonic() + 120
    while len(list(log.parent.glob(log.name + ".ready*"))) < len(processes) and time.monotonic() < deadline:
        time.sleep(0.02)
    (log.parent / (log.name + ".go")).touch()
    for process in processes:
        assert process.wait(timeout=120) == 0
    return True


def logged(log) -> list[str]:
    return sorted(line.split()[0] for line in Path(log).read_text().splitlines())


def test_two_launched_ranks_do_every_item_exactly_once_and_merge_into_one_summary(tmp_path):
    root = authors_layout(tmp_path / "in", n=12)
    out, log = tmp_path / "out", tmp_path / "calls.log"
    assert finished([launch(root, out, log, RANK=r, LOCAL_RANK=r, WORLD_SIZE=2) for r in (0, 1)])
    names = [f"{i:03d}" for i in range(1, 13)]
    assert logged(log) == names
    ranks = {line.split()[0]: line.split()[1] for line in log.read_text().splitlines()}
    assert {n for n, r in ranks.items() if r == "1"} == set(names[1::2])  # rank 1 did every second item
    assert sorted(p.name for p in out.glob("summary*.json")) == ["summary.shard0of2.json", "summary.shard1of2.json"]
    assert not list(out.glob("*.claim"))

    merged = merge_summaries(out, find_batch_items(root))
    assert merged["done"] == names and merged["failed"] == [] and merged["remaining"] == [] and merged["total"] == 12
    assert json.loads((out / "summary.json").read_text()) == merged


def test_overlapping_launches_never_redo_an_item(tmp_path):
    # two unsharded launches of the same batch at once: only the claims keep them apart
    root = authors_layout(tmp_path / "in", n=16, captions=False)
    out, log = tmp_path / "out", tmp_path / "calls.log"
    assert finished([launch(root, out, log) for _ in range(2)])
    assert logged(log) == [f"{i:03d}" for i in range(1, 17)]
    assert len({line.split()[2] for line in log.read_text().splitlines()}) == 2  # both did some of the work
    assert len(list(out.glob("*.done.json"))) == 16 and not list(out.glob("*.claim"))


def test_device_follows_the_local_rank_in_a_faked_eight_gpu_world(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for local in range(8):  # the second machine of two, eight processes each
        monkeypatch.setenv("RANK", str(8 + local))
        monkeypatch.setenv("WORLD_SIZE", "16")
        monkeypatch.setenv("LOCAL_RANK", str(local))
        assert default_device() == torch.device("cuda", local)
    assert chosen == list(range(8))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", "13")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_LOCALID", "5")
    assert default_device() == torch.device("cuda", 5)
    # SLURM's --gpus-per-task leaves each task one visible GPU: local rank 5 uses it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert default_device() == torch.device("cuda", 0)


def test_launcher_variables_give_the_process_place():
    assert process_place({}) == ProcessPlace()
    assert process_place({"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1"}) == ProcessPlace(9, 16, 1, "torchrun")
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}
    assert process_place(slurm) == ProcessPlace(3, 4, 1, "SLURM")
    # srun torchrun: RANK is global, SLURM_PROCID counts machines
    assert process_place({**slurm, "RANK": "13", "WORLD_SIZE": "32", "LOCAL_RANK": "5"}).shard == (13, 32)
    assert process_place({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2",
                          "OMPI_COMM_WORLD_LOCAL_RANK": "1"}) == ProcessPlace(1, 2, 1, "OpenMPI")
    # sbatch --array=1-4 with 2 tasks each: array task 3 (the third) holds ranks 4 and 5 of 8
    array = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert process_place({**array, "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}).shard == (5, 8)
    assert process_place(array).shard == (2, 4)
    shards = {process_place({"SLURM_ARRAY_TASK_ID": str(t), "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_PROCID": str(p),
                             "SLURM_NTASKS": "2"}).shard for t in range(3) for p in range(2)}
    assert shards == {(r, 6) for r in range(6)}
    for bad, message in (({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2"), ({"RANK": "x", "WORLD_SIZE": "2"}, "whole"),
                         ({**array, "SLURM_ARRAY_TASK_ID": "9"}, "--shard")):
        with pytest.raises(ZsharmError, match=message):
            process_place(bad)


def test_a_claim_excludes_others_until_released_and_a_dead_holder_is_taken_over(tmp_path):
    assert try_claim(tmp_path, "a") and not try_claim(tmp_path, "a")  # held by this live process
    distributed.release_claim(tmp_path, "a")
    assert try_claim(tmp_path, "a")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim_path(tmp_path, "b").write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "since": 0}))
    assert try_claim(tmp_path, "b")
    assert json.loads(claim_path(tmp_path, "b").read_text())["pid"] == os.getpid()
    claim_path(tmp_path, "c").write_text(json.dumps({"host": "another-machine", "pid": dead.pid, "since": 0}))
    assert not try_claim(tmp_path, "c")  # another machine's process: not ours to judge


def test_an_item_claimed_elsewhere_is_left_alone_and_merge_reports_it(tmp_path):
    root = authors_layout(tmp_path / "in", n=4, captions=False)
    out = tmp_path / "out"
    out.mkdir()
    claim_path(out, "002").write_text(json.dumps({"host": "another-machine", "pid": 1, "since": time.time()}))
    calls = []

    def process_one(item, out_path):
        calls.append(item.name)
        if item.name == "003":
            raise ZsharmError("a bad image")
        out_path.write_bytes(item.composite.read_bytes())

    summary = run_batch(find_batch_items(root), out, process_one, shard=(1, 2), progress=False)
    assert calls == ["004"] and summary.busy == ["002"]
    run_batch(find_batch_items(root), out, process_one, shard=(0, 2), progress=False)
    merged = merge_summaries(out, find_batch_items(root))
    assert merged["done"] == ["001", "004"] and merged["running"] == ["002"]
    assert merged["failed"] == [{"name": "003", "error": "a bad image"}] and merged["remaining"] == []
    without_items = merge_summaries(out)
    assert without_items["total"] == 4 and without_items["missing_shards"] == [] and without_items["remaining"] == 0


def test_the_merge_command_writes_one_summary_and_says_what_is_left(tmp_path, capsys):
    from zsharm.commands.cli import main
    root = authors_layout(tmp_path / "in", n=5, captions=False)
    out = tmp_path / "out"
    broken = {"003"}

    def process_one(item, out_path):
        if item.name in broken:
            raise ZsharmError("unreadable")
        out_path.write_bytes(item.composite.read_bytes())

    run_batch(find_batch_items(root), out, process_one, shard=(2, 3), progress=False)  # 003: fails
    run_batch(find_batch_items(root), out, process_one, shard=(0, 3), progress=False)  # 001, 004
    capsys.readouterr()  # the runs' own lines
    assert main(["harmonize", "--merge", "--out", str(out), "--batch", str(root)]) == 1
    assert capsys.readouterr().out.startswith("2 done, 1 failed, 0 running, 2 remaining")
    merged = json.loads((out / "summary.json").read_text())
    assert merged["remaining"] == ["002", "005"] and merged["failed"] == [{"name": "003", "error": "unreadable"}]
    broken.clear()  # fixed; a relaunch with two processes does the rest
    for rank in (0, 1):
        run_batch(find_batch_items(root), out, process_one, shard=(rank, 2), progress=False)
    assert main(["harmonize", "--merge", "--out", str(out), "--batch", str(root)]) == 0
    merged = json.loads((out / "summary.json").read_text())
    assert merged["done"] == ["001", "002", "003", "004", "005"] and merged["failed"] == []  # 003's old failure
    assert main(["harmonize", "--merge", "--out", str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_under_accelerate_launch_its_own_state_is_asked(monkeypatch):
    import types

    class PartialState:  # what accelerate reports for process 5 of 8 (machine 2, slot 1)
        process_index, num_processes, local_process_index = 5, 8, 1

    monkeypatch.setitem(sys.modules, "accelerate", types.SimpleNamespace(PartialState=PartialState))
    monkeypatch.setenv("RANK", "0")  # torchrun's variables, which accelerate's own view overrides
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert process_place() == ProcessPlace(0, 1, 0, "torchrun")  # not launched by accelerate: not asked
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert process_place() == ProcessPlace(5, 8, 1, "accelerate")


def test_a_live_claim_moved_aside_by_a_late_taker_is_put_back(tmp_path):
    # B saw a dead holder, but A took the claim over first: B's move finds A's live claim and restores it
    claim_path(tmp_path, "x").write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "since": 0}))
    distributed._move_aside(claim_path(tmp_path, "x"))
    assert json.loads(claim_path(tmp_path, "x").read_text())["pid"] == os.getpid()
    assert [p.name for p in tmp_path.iterdir()] == ["x.claim"]
