"""Shared test fixtures. `tests/authors_reference/` (in the repository) holds what the authors' implementation
computed on two tiny models, and the models; the published PiDiNet weights are never committed: tests that need
them find them in `../shared/weights/pidinet` beside the checkout or in $ZSHARM_PIDINET_WEIGHTS, and skip
otherwise."""

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ZSHARM_SHARED", REPO.parent / "shared"))
REFERENCE = REPO / "tests" / "authors_reference"
PIDINET_TINY = "table5_pidinet-tiny.pth"


@pytest.fixture(scope="session")
def pidinet_dir() -> Path:
    candidates = [SHARED / "weights" / "pidinet"]
    if os.environ.get("ZSHARM_PIDINET_WEIGHTS"):
        given = Path(os.environ["ZSHARM_PIDINET_WEIGHTS"]).expanduser()
        candidates.append(given.parent if given.is_file() else given)
    for path in candidates:
        if (path / PIDINET_TINY).is_file():
            return path
    pytest.skip(f"the published PiDiNet weights ({PIDINET_TINY}) are absent: set ZSHARM_PIDINET_WEIGHTS to their "
                "folder (zsharm fetches them to ~/.cache/zsharm/pidinet on first use)")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The authors' inputs and golden arrays (tests/authors_reference)."""
    assert (REFERENCE / "golden_steps10" / "arrays.npz").is_file(), f"{REFERENCE} is incomplete"
    return REFERENCE


@pytest.fixture(scope="session")
def reference_models(_private_cache) -> dict:
    """{"tiny_sd2": folder, "tiny_sd2_strong": folder}: the reference models as diffusers folders, in the cache."""
    from zsharm.models import cache_dir
    from zsharm.repro.reference import reference_models
    return reference_models(REFERENCE, cache_dir("reference"))


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


def edit_inputs(pipe, config, seed=0):
    """An inverted composite and per-step embeddings that differ from step to step (as refined and optimised
    ones do), so that a step using another step's embedding shows."""
    import torch
    from PIL import Image

    from zsharm.edit.diffusion import Run, text_embeddings
    from zsharm.edit.diffusion import image_to_tensor
    from zsharm.edit.inversion import ddim_invert
    run = Run(pipe=pipe, config=config, progress=False)
    image, _ = make_composite(width=128, height=128)
    inversion = ddim_invert(run, image_to_tensor(Image.fromarray(image)), "cat bright",
                            torch.Generator().manual_seed(config.seed))
    g = torch.Generator().manual_seed(seed)
    n = len(inversion.timesteps) - 1
    with torch.no_grad():
        text = text_embeddings(run, "refinement", ["cat bright", "cat winter dull"])
        null = text_embeddings(run, "nulltext", [""])
    embeddings = [text + 0.05 * torch.randn(text.shape, generator=g) for _ in range(n)]
    uncond = [null + 0.05 * torch.randn(null.shape, generator=g) for _ in range(n)]
    return run, inversion, embeddings, uncond


@contextmanager
def recorded_unet_calls(unet):
    """[(latents, timestep, context, prediction)] of every UNet call within the block."""
    calls = []

    def hook(module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        calls.append((sample.detach().clone(), t, kwargs["encoder_hidden_states"].detach().clone(),
                      output.sample.detach().clone()))

    handle = unet.register_forward_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()
