"""Shared test fixtures. `../shared` (beside the checkout) holds the published PiDiNet weights and the
reference fixture of the authors' implementation; tests that need it skip where it is absent."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ZSHARM_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    return SHARED


@pytest.fixture(scope="session")
def pidinet_dir(shared_dir) -> Path:
    path = shared_dir / "weights" / "pidinet"
    if not (path / "table5_pidinet-tiny.pth").is_file():
        pytest.skip("published PiDiNet weights are absent")
    return path


@pytest.fixture(scope="session")
def reference_dir(shared_dir) -> Path:
    path = shared_dir / "reference"
    if not (path / "golden_steps10" / "arrays.npz").is_file():
        pytest.skip("the reference fixture is absent")
    return path


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tiny models and downloads go to a per-session cache, never the user's."""
    if "ZSHARM_TEST_CACHE" in os.environ:  # reuse between local runs
        os.environ["ZSHARM_CACHE"] = os.environ["ZSHARM_TEST_CACHE"]
    else:
        os.environ["ZSHARM_CACHE"] = str(tmp_path_factory.mktemp("zsharm-cache"))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one CPU thread for a module: two threads on a shared two-core machine stall in OpenMP barriers
    (5-100x slower); one is steady. Modules use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_pipe():
    import torch
    from zsharm.models import load_pipeline
    return load_pipeline("tiny", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def tamed_pipe():
    import torch
    from zsharm.models import load_pipeline
    return load_pipeline("tiny-tamed", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def random_edges():
    """A random-weight PiDiNet: the edge loss's machinery without the published weights."""
    from zsharm.edit.pidinet import random_pidinet
    return random_pidinet("tiny", seed=0).eval().requires_grad_(False)


def make_composite(width=160, height=128, seed=0):
    """A smooth synthetic photo with a reddish square pasted on it, and the square's mask."""
    import numpy as np
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    image = np.stack([0.3 + 0.4 * x, 0.4 + 0.3 * y, 0.6 - 0.3 * x * y], -1)
    image += 0.03 * rng.standard_normal(image.shape)
    mask = np.zeros((height, width), bool)
    mask[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = True
    image[mask] = image[mask] * [1.4, 0.8, 0.6] + 0.1
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask


class LoopbackServer:
    """Files served over HTTP on 127.0.0.1, for the downloaders: `files` maps a path ("/a.pth") to its bytes;
    `requests` lists the paths asked for."""

    def __init__(self):
        import http.server
        import threading

        self.files, self.requests = {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def loopback_server():
    server = LoopbackServer()
    yield server
    server.close()


@pytest.fixture
def closed_port_url():
    """A URL on loopback where nothing listens (the port was bound, then released)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/file"
