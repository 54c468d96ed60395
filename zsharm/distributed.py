"""Many processes, one folder of composites: which process this is, which device it uses, which items it does.

    accelerate launch --num_processes 8 -m zsharm harmonize --batch in/ --out out/ ...
    torchrun --nproc_per_node 8 -m zsharm harmonize --batch in/ --out out/ ...
    srun zsharm harmonize --batch in/ --out out/ ...          # SLURM tasks, or an sbatch --array job

Each process reads its place from the launcher: its global rank and the world size split the items (`shard`),
its local rank (the process's index on its own machine) picks its GPU. Every item is also claimed with a file
created atomically in the output folder, so overlapping launches (a rerun while the first is still going, two
array jobs with the same index) never do an item twice or write one file together.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from zsharm.errors import ZsharmError

log = logging.getLogger(__name__)

# (rank, world size, local rank) variables of each launcher, in the order they are trusted. torchrun (and
# accelerate launch, which runs torchrun) exports RANK; under `srun torchrun` RANK is global and SLURM_PROCID
# counts machines, so RANK comes first.
LAUNCHERS = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("SLURM", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ("OpenMPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("MPICH / Intel MPI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
)


@dataclass(frozen=True)
class ProcessPlace:
    """Where this process stands: `rank` of `world_size` processes over all machines (with the SLURM array
    task folded in), `local_rank` among the processes of its machine, and which launcher said so."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size


def _integer(env, key) -> int | None:
    value = env.get(key)
    if value is None or str(value).strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ZsharmError(f"launcher variable {key}={value!r} is not a whole number") from None


def _from_accelerate(env) -> ProcessPlace | None:
    """accelerate's own view when this process was started by `accelerate launch` and accelerate is installed."""
    if not any(key.startswith("ACCELERATE_") for key in env):
        return None
    try:
        from accelerate import PartialState
    except ImportError:
        return None
    state = PartialState()
    return ProcessPlace(state.process_index, state.num_processes, state.local_process_index, "accelerate")


def process_place(environ=None) -> ProcessPlace:
    """This process's place from the launcher's variables; (0 of 1, local 0) when nothing launched it.

    A SLURM array (`sbatch --array=0-N`) makes each array task one more split: task t of T running W
    processes holds ranks t*W .. t*W+W-1 of T*W."""
    env = os.environ if environ is None else environ
    place = (_from_accelerate(env) if environ is None else None) or ProcessPlace()
    if place.launcher == "none":
        for launcher, rank_key, size_key, local_key in LAUNCHERS:
            rank, size = _integer(env, rank_key), _integer(env, size_key)
            if rank is None or size is None:
                continue
            if size < 1 or not 0 <= rank < size:
                raise ZsharmError(f"bad launcher variables {rank_key}={rank} {size_key}={size}")
            local = _integer(env, local_key)
            place = ProcessPlace(rank, size, local if local is not None else 0, launcher)
            break
    task, count = _integer(env, "SLURM_ARRAY_TASK_ID"), _integer(env, "SLURM_ARRAY_TASK_COUNT")
    if task is not None and count is not None:
        first = _integer(env, "SLURM_ARRAY_TASK_MIN") or 0
        index = task - first
        if not 0 <= index < count:
            raise ZsharmError(f"SLURM array task {task} is not among {count} tasks from {first} (an array with "
                              f"gaps or a step cannot be split evenly: pass --shard I/N yourself)")
        place = ProcessPlace(index * place.world_size + place.rank, count * place.world_size, place.local_rank,
                             f"SLURM array + {place.launcher}" if place.launcher != "none" else "SLURM array")
    return place


def process_device(place: ProcessPlace | None = None):
    """The device of this process: the GPU of its local rank (made the current CUDA device, so libraries that
    say just "cuda" use it too), else Apple's MPS, else the CPU.

    Launchers that give every process only its own GPU (CUDA_VISIBLE_DEVICES, SLURM's --gpus-per-task) leave one
    visible device, which local rank modulo the device count picks as well."""
    import torch
    if torch.cuda.is_available():
        place = place or process_place()
        count = torch.cuda.device_count()
        index = place.local_rank % count
        if place.local_rank >= count > 1:
            log.warning("local rank %d but only %d GPUs visible: sharing cuda:%d", place.local_rank, count, index)
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ---------------------------------------------------------------- claims


def claim_path(out_dir, name: str) -> Path:
    return Path(out_dir) / f"{name}.claim"


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": round(time.time(), 1)}


def _holder_is_gone(path: Path) -> bool:
    """Whether a claim holds no one: empty or unreadable (a claim is complete from its first moment, see
    `try_claim`, so such a file is left by a crash or a full disk), or left by a process of this machine that no
    longer runs (killed, out of memory)."""
    try:
        holder = json.loads(path.read_text())
        host, pid = holder["host"], int(holder["pid"])
    except FileNotFoundError:
        return False  # released meanwhile: the next try creates it afresh
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return True
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def claim_is_held(path) -> bool:
    """Whether the claim file at `path` belongs to a process that may still be working on its item."""
    return not _holder_is_gone(Path(path))


def try_claim(out_dir, name: str) -> bool:
    """Claim item `name` for this process: True if it is now ours, False if another live process holds it.

    The claim is written whole to a private file first and then hard-linked to `<name>.claim`; the link is
    granted to exactly one creator (also on NFS v3 and later), and a claim never exists half-written. A claim
    left by a dead process of this machine, or empty or garbled, is taken over."""
    path = claim_path(out_dir, name)
    mine = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.new")
    try:
        mine.write_text(json.dumps(_owner()))
    except OSError as error:
        mine.unlink(missing_ok=True)
        raise ZsharmError(f"cannot claim {name}: cannot write {mine}: {error.strerror or error}") from None
    try:
        for _ in range(3):
            try:
                os.link(mine, path)
                return True
            except FileExistsError:
                if not _holder_is_gone(path):
                    return False
                log.info("%s: taking over a claim nobody holds", name)
                _move_aside(path)
            except OSError as error:
                raise ZsharmError(f"cannot claim {name}: cannot create {path}: {error.strerror or error}") from None
        return False
    finally:
        mine.unlink(missing_ok=True)


def _move_aside(path: Path) -> None:
    """Remove a dead holder's claim. A rename succeeds for one process only; if what it moved is a live claim
    after all (another process took over first), it is put back."""
    aside = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if not _holder_is_gone(aside):
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


def release_claim(out_dir, name: str) -> None:
    claim_path(out_dir, name).unlink(missing_ok=True)


@contextmanager
def claimed(out_dir, name: str):
    """`with claimed(out, name) as mine:` holds the claim for the block when `mine`, and always lets it go."""
    mine = try_claim(out_dir, name)
    try:
        yield mine
    finally:
        if mine:
            release_claim(out_dir, name)
