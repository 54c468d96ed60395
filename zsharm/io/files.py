"""Files written atomically (a temporary beside the target, renamed into place) and checked for writability."""

from __future__ import annotations

import glob
import json
import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path

from zsharm.errors import ZsharmError, one_line


def check_writable(path) -> None:
    """Refuse, before any work, a path that is a folder or lies where no file can be created."""
    path = Path(path)
    if path.is_dir():
        raise ZsharmError(f"cannot save {path}: it is a folder")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ZsharmError(f"cannot save {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ZsharmError(f"cannot save {path}: {_why_unwritable(parent)}")


def _why_unwritable(folder: Path) -> str:
    """Why no file can be created in `folder`: a read-only file system (a mount option) or the permissions."""
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        read_only = False
    if read_only:
        return f"{folder} is on a read-only file system"
    return f"no permission to write in {folder}"


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (same suffix, so writers infer the format); move it into place
    when the block succeeds, remove it on every other exit (an error, Ctrl-C, a closed generator). Nothing
    half-written is ever left under `path`; temporary files of processes that died (SIGKILL) are swept."""
    path = Path(path)
    if path.is_dir():
        raise ZsharmError(f"cannot save {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or one_line(error)
        raise ZsharmError(f"cannot save {path}: cannot create its folder ({reason})") from None
    _sweep_stale(path)
    temp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        try:
            temp.unlink(missing_ok=True)
        except OSError:  # a read-only folder refuses even this: the error that got here is the one to report
            pass


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (POSIX; elsewhere always True, so nothing of a live process is swept)."""
    if os.name != "posix":
        return True  # Windows' os.kill(pid, 0) would end the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def temp_owner(name: str) -> int | None:
    """The process id in a temporary name zsharm made (`.x.<pid>-<hex>.tmp.png`, `x.tmp<pid>`), else None."""
    match = re.search(r"\.(\d+)-[0-9a-f]{8}\.tmp|\.tmp(\d+)$", name)
    return int(match[1] or match[2]) if match else None


def _sweep_stale(path: Path) -> None:
    for temp in path.parent.glob(f".{glob.escape(path.stem)}.*.tmp{glob.escape(path.suffix)}"):
        pid = temp_owner(temp.name)
        if pid is not None and pid != os.getpid() and not process_alive(pid):
            temp.unlink(missing_ok=True)


def write_bytes_atomic(path, data: bytes) -> None:
    """Write `data` to `path` atomically (a temp file beside it, then a rename)."""
    write_atomic(Path(path), lambda file: file.write(data))


def write_json(path, data) -> None:
    """Write `data` as indented JSON, atomically."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))


def write_atomic(path: Path, write) -> None:
    """Run `write(file)` on a temp file beside `path`, then move it into place (see `atomic_path`); an
    OSError becomes one line."""
    try:
        with atomic_path(path) as temp:
            # os.open with 0o666 lets the umask set the permissions, as for any ordinary new file
            with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
    except ZsharmError:
        raise
    except Exception as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else one_line(error)
        raise ZsharmError(f"cannot save {path}: {reason}") from None
