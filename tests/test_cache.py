"""zsharm.cache: one cache folder, one downloader (verified, locked, offline-aware), git blob ids."""

import subprocess
import threading

import pytest

from zsharm.cache import cache_dir, fetch, git_blob_id, offline
from zsharm.errors import ZsharmError


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ZSHARM_CACHE", str(tmp_path / "cache"))
    for name in ("ZSHARM_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    assert cache_dir("pidinet") == tmp_path / "cache" / "pidinet"
    monkeypatch.setenv("ZSHARM_CACHE", "~/zc")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir("x", create=False) == tmp_path / "home" / "zc" / "x"  # ~ expanded
    monkeypatch.delenv("ZSHARM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("x", create=False) == tmp_path / "xdg" / "zsharm" / "x"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir("x", create=False) == tmp_path / "home" / ".cache" / "zsharm" / "x"


@pytest.mark.parametrize("data", [b"", b"hello zsharm\n", bytes(range(256)) * 1000])
def test_git_blob_id_equals_git_hash_object(tmp_path, data):
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout
    assert git_blob_id(path) == expected.strip()


def test_offline_follows_either_variable(monkeypatch):
    assert not offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("ZSHARM_OFFLINE", "true")
    assert offline()


def test_a_fetched_file_is_verified_then_cached(loopback_server, tmp_path):
    loopback_server.files["/f.bin"] = b"weights" * 100
    dest = cache_dir("t") / "f.bin"
    blob = git_blob_id_of(tmp_path, b"weights" * 100)
    assert fetch(loopback_server.url("/f.bin"), dest, git_blob=blob, progress=False) == dest
    assert dest.read_bytes() == b"weights" * 100
    fetch(loopback_server.url("/f.bin"), dest, git_blob=blob, progress=False)  # the cached copy, no request
    assert loopback_server.requests == ["/f.bin"]


def test_a_tampered_download_is_refused_and_nothing_is_cached(loopback_server, tmp_path):
    good = b"weights" * 100
    loopback_server.files["/f.bin"] = good[:-1] + b"X"
    dest = cache_dir("t") / "f.bin"
    with pytest.raises(ZsharmError, match="fails its check") as error:
        fetch(loopback_server.url("/f.bin"), dest, git_blob=git_blob_id_of(tmp_path, good), what="W", hint="do X",
              progress=False)
    assert "\n" not in str(error.value) and "do X" in str(error.value)
    assert [p.name for p in dest.parent.iterdir()] == []


def test_a_server_that_is_down_gives_one_line_naming_the_fix(closed_port_url):
    dest = cache_dir("t") / "f.bin"
    with pytest.raises(ZsharmError) as error:
        fetch(closed_port_url, dest, hint="put the file at P", progress=False)
    message = str(error.value)
    assert "\n" not in message and closed_port_url in message and "put the file at P" in message
    assert not dest.exists()


def test_a_missing_file_on_the_server_names_the_status(loopback_server):
    with pytest.raises(ZsharmError, match="404"):
        fetch(loopback_server.url("/nothing"), cache_dir("t") / "f.bin", progress=False)


def test_offline_refuses_to_download_and_says_what_to_do(monkeypatch, loopback_server):
    loopback_server.files["/f.bin"] = b"x"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ZsharmError, match="offline") as error:
        fetch(loopback_server.url("/f.bin"), cache_dir("t") / "f.bin", hint="set ENV", progress=False)
    assert "set ENV" in str(error.value) and loopback_server.requests == []


def test_a_cached_file_that_fails_its_check_is_refused_not_replaced(loopback_server, tmp_path):
    dest = cache_dir("t") / "f.bin"
    dest.write_bytes(b"mine")
    loopback_server.files["/f.bin"] = b"theirs"
    with pytest.raises(ZsharmError, match="delete the file"):
        fetch(loopback_server.url("/f.bin"), dest, git_blob=git_blob_id_of(tmp_path, b"theirs"), progress=False)
    assert dest.read_bytes() == b"mine" and loopback_server.requests == []


def test_two_simultaneous_fetches_download_once(loopback_server, tmp_path):
    data = bytes(range(256)) * 4000
    loopback_server.files["/big.bin"] = data
    dest = cache_dir("t") / "big.bin"
    errors, blob = [], git_blob_id_of(tmp_path, data)

    def one():
        try:
            fetch(loopback_server.url("/big.bin"), dest, git_blob=blob, progress=False)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and dest.read_bytes() == data
    assert loopback_server.requests == ["/big.bin"]


def git_blob_id_of(folder, data: bytes) -> str:
    path = folder / "expected.bin"
    path.write_bytes(data)
    return git_blob_id(path)


def test_a_file_pinned_by_sha256_is_fetched_and_a_wrong_one_is_refused(loopback_server, tmp_path):
    import hashlib
    body = b"pinned" * 1000
    loopback_server.files["/p.bin"] = body
    dest = cache_dir("t") / "p.bin"
    assert fetch(loopback_server.url("/p.bin"), dest, sha256=hashlib.sha256(body).hexdigest(), progress=False) == dest
    assert dest.read_bytes() == body
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ZsharmError, match=f"the weights at .*sha256 {hashlib.sha256(body).hexdigest()[:12]}.*"
                                          f"expected {wrong[:12]}"):
        fetch(loopback_server.url("/p.bin"), dest, sha256=wrong, what="the weights", progress=False)


def test_the_file_hash_is_sha256_of_the_whole_file(tmp_path):
    import hashlib

    from zsharm.cache import sha256_of
    body = bytes(range(256)) * 9000  # over two of the reader's 1 MiB chunks
    (tmp_path / "f").write_bytes(body)
    assert sha256_of(tmp_path / "f") == hashlib.sha256(body).hexdigest()


def test_a_cache_refusal_says_which_variable_set_it_or_which_to_set(monkeypatch, tmp_path):
    from zsharm.cache import check_cache
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("ZSHARM_CACHE", str(tmp_path / "afile"))
    with pytest.raises(ZsharmError, match=f"set by ZSHARM_CACHE={tmp_path / 'afile'}: point ZSHARM_CACHE at"):
        check_cache()
    monkeypatch.delenv("ZSHARM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "afile"))
    with pytest.raises(ZsharmError, match="not writable .* set by XDG_CACHE_HOME=.*: point XDG_CACHE_HOME at"):
        check_cache()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".cache").write_text("")  # ~/.cache a file: the default cache cannot be made
    with pytest.raises(ZsharmError, match="not writable .*; set ZSHARM_CACHE to a writable folder"):
        check_cache()


def test_a_download_that_fails_its_sha256_is_refused_and_nothing_is_cached(loopback_server, tmp_path):
    import hashlib
    loopback_server.files["/s.bin"] = b"tampered"
    dest = cache_dir("t") / "s.bin"
    with pytest.raises(ZsharmError, match="fails its check"):
        fetch(loopback_server.url("/s.bin"), dest, sha256=hashlib.sha256(b"genuine").hexdigest(), progress=False)
    assert list(dest.parent.iterdir()) == []


def test_a_fetch_makes_its_folders_and_leaves_only_the_file_there_and_nothing_where_it_ran(loopback_server, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    loopback_server.files["/n.bin"] = b"nested"
    dest = tmp_path / "deep" / "er" / "n.bin"
    fetch(loopback_server.url("/n.bin"), dest, progress=False)
    assert dest.read_bytes() == b"nested" and list(dest.parent.iterdir()) == [dest]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "deep"]  # the lock lives in the cache
    assert [p.suffix for p in cache_dir(".locks").iterdir()] == [".lock"]


def test_a_fetch_shows_its_progress_bar_unless_asked_not_to(loopback_server, capfd):
    loopback_server.files["/b.bin"] = b"bar" * 1000
    fetch(loopback_server.url("/b.bin"), cache_dir("t") / "quiet.bin", progress=False)
    assert capfd.readouterr().err == ""
    fetch(loopback_server.url("/b.bin"), cache_dir("t") / "shown.bin")  # the default: a bar
    assert "100%" in capfd.readouterr().err
