"""Where zsharm keeps what it fetches or builds, and the one way it fetches a file.

    cache_dir("pidinet")                 # $ZSHARM_CACHE/pidinet, else $XDG_CACHE_HOME/zsharm/pidinet,
                                         # else ~/.cache/zsharm/pidinet
    fetch(url, dest, sha256=..., what="the PiDiNet weights", hint="set ZSHARM_PIDINET_WEIGHTS to the file")

`fetch` downloads through a temporary file beside `dest` (torch.hub's downloader: progress bar, temp file), checks
the content before it lands, and holds a file lock so two processes never fetch the same file at once. Offline
(ZSHARM_OFFLINE or HF_HUB_OFFLINE set) it refuses to download and says what to do instead.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from zsharm.errors import ZsharmError, one_line

_TRUE = ("1", "true", "yes", "on")


def cache_dir(*parts: str, create: bool = True) -> Path:
    path = Path(cache_root(), *parts)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ZsharmError(f"cannot create the cache folder {path}: {error.strerror or one_line(error)}; "
                              f"{_where_cache_is_set()}") from None
    return path


def cache_root() -> Path:
    root = os.environ.get("ZSHARM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "zsharm")
    return Path(root).expanduser()


def _where_cache_is_set() -> str:
    for name in ("ZSHARM_CACHE", "XDG_CACHE_HOME"):
        if os.environ.get(name):
            return f"it is set by {name}={os.environ[name]}: point {name} at a writable folder"
    return "set ZSHARM_CACHE to a writable folder"


def check_cache() -> None:
    """Refuse, before any model is loaded or fetched, a cache that is a file or cannot be written."""
    from zsharm.io.files import check_writable
    root = cache_root()
    if root.exists() and not root.is_dir():
        raise ZsharmError(f"the cache {root} is a file, not a folder; {_where_cache_is_set()}")
    try:
        check_writable(root / ".locks" / "check")
    except ZsharmError as error:
        raise ZsharmError(f"the cache is not writable ({error}); {_where_cache_is_set()}") from None


def offline() -> bool:
    """Whether downloads are forbidden: ZSHARM_OFFLINE, or the hub's own HF_HUB_OFFLINE."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("ZSHARM_OFFLINE", "HF_HUB_OFFLINE"))


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_id(path) -> str:
    """Git's content hash of a file (what `git hash-object` prints): SHA-1 of b"blob <size>\\0" + the bytes.

    It identifies a file committed to a repository, so a download from that commit can be verified even where
    nobody published its SHA-256."""
    path = Path(path)
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path, sha256: str | None = None, git_blob: str | None = None) -> str | None:
    """None if `path` has the expected content, else a short reason."""
    if sha256 and (found := sha256_of(path)) != sha256:
        return f"sha256 {found[:12]}..., expected {sha256[:12]}..."
    if git_blob and (found := git_blob_id(path)) != git_blob:
        return f"git blob id {found[:12]}..., expected {git_blob[:12]}..."
    return None


def fetch(url: str, dest, *, sha256: str | None = None, git_blob: str | None = None, what: str = "the file",
          hint: str = "download it yourself and pass its path", progress: bool = True) -> Path:
    """`dest`, downloaded from `url` first unless it is already there with the expected content.

    A cached file that fails its check is refused (never silently replaced: the user may have put it there). A
    download that fails its check is deleted, so nothing unverified is ever left in the cache."""
    from filelock import FileLock

    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # locks live apart so a folder of the cache holds only what was fetched
    lock = cache_dir(".locks") / f"{dest.name}.{hashlib.sha1(str(dest.resolve()).encode()).hexdigest()[:12]}.lock"
    with FileLock(str(lock)):
        if dest.is_file():
            problem = verify(dest, sha256, git_blob)
            if problem:
                raise ZsharmError(f"{what} at {dest} fails its check ({problem}); delete the file to fetch it again")
            return dest
        if offline():
            raise ZsharmError(f"{what} is not at {dest} and offline mode (ZSHARM_OFFLINE / HF_HUB_OFFLINE) forbids "
                              f"fetching {url}; {hint}")
        part = dest.with_name(dest.name + ".part")
        try:
            _download(url, part, progress, hint)
            problem = verify(part, sha256, git_blob)
            if problem:
                raise ZsharmError(f"{what} downloaded from {url} fails its check ({problem}); nothing was kept; {hint}")
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
    return dest


def _download(url: str, path: Path, progress: bool, hint: str) -> None:
    import urllib.error

    from torch.hub import download_url_to_file
    try:
        download_url_to_file(url, str(path), progress=progress)
    except urllib.error.HTTPError as error:
        raise ZsharmError(f"cannot fetch {url}: the server answered {error.code} {error.reason}; {hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise ZsharmError(f"cannot fetch {url}: {one_line(reason)} (no connection?); {hint}") from None
