"""PiDiNet: the pixel difference convolutions, the published checkpoints, and where the weights come from."""

import argparse
import hashlib

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from skimage import data

import zsharm.edit.pidinet as pidinet
from zsharm.edit.edges import pidinet_edges
from zsharm.errors import ZsharmError
from zsharm.cache import cache_dir
from zsharm.edit.pidinet import load_pidinet, PiDiNet, pixel_difference_conv, random_pidinet, resolve_weights, VARIANTS

TINY = VARIANTS["tiny"]["file"]
FULL = VARIANTS["full"]["file"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path, closed_port_url):
    """An empty private cache, no weights from the environment, and downloads pointed at a closed loopback port."""
    monkeypatch.setenv("ZSHARM_CACHE", str(tmp_path / "cache"))
    for name in ("ZSHARM_PIDINET_WEIGHTS", "ZSHARM_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pidinet, "WEIGHTS_URL", closed_port_url + "/{file}")


def checkpoint_tensors(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# --- the pixel difference convolutions against their definitions ---------------------------------------

OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # tap k of a 3x3 kernel, raster order
CLOCKWISE_NEXT = {0: 1, 1: 2, 2: 5, 5: 8, 8: 7, 7: 6, 6: 3, 3: 0, 4: 4}
NEIGHBOURS = [o for o in OFFSETS if o != (0, 0)]  # the 8 directions, raster order


def shifted(x, dy, dx):
    """x(p + (dy, dx)) for every pixel p, zero outside the image."""
    h, w = x.shape[-2:]
    return F.pad(x, (2, 2, 2, 2))[..., 2 + dy:2 + dy + h, 2 + dx:2 + dx + w]


def by_definition(x, weight, kind):
    """Pixel difference convolution written from the paper's definitions, groups=1: each weight of the 3x3
    kernel multiplies a difference of two pixels (cd: neighbour - centre; ad: tap - its clockwise
    neighbour on the ring; rd: weights 1..8 multiply outer-ring pixel - inner-ring pixel along direction
    1..8; cv: the pixel itself)."""
    terms = []
    for k, (dy, dx) in enumerate(OFFSETS):
        if kind == "cv":
            diff = shifted(x, dy, dx)
        elif kind == "cd":
            diff = shifted(x, dy, dx) - x
        elif kind == "ad":
            ny, nx = OFFSETS[CLOCKWISE_NEXT[k]]
            diff = shifted(x, dy, dx) - shifted(x, ny, nx)
        else:  # rd: weight 0 is unused
            if k == 0:
                continue
            ry, rx = NEIGHBOURS[k - 1]
            diff = shifted(x, 2 * ry, 2 * rx) - shifted(x, ry, rx)
        terms.append(torch.einsum("oc,bchw->bohw", weight[:, :, k // 3, k % 3], diff))
    return sum(terms)


@pytest.mark.parametrize("kind", ["cv", "cd", "ad", "rd"])
def test_pixel_difference_conv_matches_its_definition(kind):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 11, 13, generator=gen, dtype=torch.float64)
    weight = torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(pixel_difference_conv(x, weight, kind), by_definition(x, weight, kind),
                               rtol=0, atol=1e-12)
    # depthwise (groups = channels), as inside the blocks
    dw = torch.randn(3, 1, 3, 3, generator=gen, dtype=torch.float64)
    expected = torch.cat([by_definition(x[:, c:c + 1], dw[c:c + 1], kind) for c in range(3)], dim=1)
    torch.testing.assert_close(pixel_difference_conv(x, dw, kind, groups=3), expected, rtol=0, atol=1e-12)


def test_difference_kinds_ignore_a_constant_image():
    # cd, ad and rd see only differences of pixels: away from the zero padding a flat image gives 0
    x = torch.full((1, 3, 12, 12), 0.7, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    for kind in ("cd", "ad", "rd"):
        inner = pixel_difference_conv(x, weight, kind)[..., 2:-2, 2:-2]
        assert inner.abs().max() < 1e-12, kind
    assert pixel_difference_conv(x, weight, "cv")[..., 2:-2, 2:-2].abs().max() > 1e-3


# --- the published checkpoints ----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["tiny", "full"])
def test_published_checkpoint_sha256(pidinet_dir, variant):
    spec = VARIANTS[variant]
    assert hashlib.sha256((pidinet_dir / spec["file"]).read_bytes()).hexdigest() == spec["sha256"]


@pytest.mark.parametrize("variant, params", [("tiny", 84_477), ("full", 710_149)])
def test_published_checkpoint_loads_strictly(pidinet_dir, variant, params):
    model = load_pidinet(pidinet_dir, variant)
    saved = checkpoint_tensors(pidinet_dir / VARIANTS[variant]["file"])
    ours = model.state_dict()
    assert {"module." + k for k in ours} == set(saved)
    assert all(torch.equal(ours[k], saved["module." + k]) for k in ours)
    assert sum(p.numel() for p in model.parameters()) == params
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def auc(score, positive):
    """ROC-AUC of a soft score against a boolean label (Mann-Whitney U over ranks)."""
    ranks = rankdata(score)
    n_pos = positive.sum()
    n_neg = positive.size - n_pos
    return (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@pytest.fixture(scope="module")
def camera_and_canny():
    gray = cv2.resize(data.camera(), (256, 256), interpolation=cv2.INTER_AREA)
    canny = cv2.Canny(cv2.GaussianBlur(gray, (5, 5), 1.0), 50, 150)
    near_edge = cv2.dilate(canny, np.ones((5, 5), np.uint8)) > 0
    image = torch.from_numpy(np.repeat(gray[None, None], 3, axis=1)).float() / 255
    return image, near_edge.ravel()


@pytest.mark.parametrize("variant", ["tiny", "full"])
def test_published_weights_find_canny_edges_random_ones_do_not(pidinet_dir, camera_and_canny, variant):
    image, near_edge = camera_and_canny
    with torch.no_grad():
        trained = auc(pidinet_edges(load_pidinet(pidinet_dir, variant), image).numpy().ravel(), near_edge)
        untrained = [auc(pidinet_edges(random_pidinet(variant, seed), image).numpy().ravel(), near_edge)
                     for seed in range(3)]
    assert trained > 0.93  # measured 0.97 (tiny and full)
    assert max(untrained) < 0.6  # measured 0.37-0.53
    assert trained - max(untrained) > 0.35


def test_float64_model_agrees_with_float32(pidinet_dir):
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    m32 = load_pidinet(pidinet_dir)
    m64 = load_pidinet(pidinet_dir, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m64.parameters())
    with torch.no_grad():
        e32, e64 = pidinet_edges(m32, x), pidinet_edges(m64, x.double())
    assert e32.shape == (1, 1, 40, 56)
    torch.testing.assert_close(e64.float(), e32, rtol=0, atol=2e-5)


def test_forward_returns_side_maps_then_fused(pidinet_dir):
    model = load_pidinet(pidinet_dir)
    x = torch.randn(2, 3, 33, 47, generator=torch.Generator().manual_seed(0))  # odd sizes: pooled floors
    with torch.no_grad():
        maps = model(x)
        fused = model.edge_map(x)
    assert len(maps) == 5 and all(m.shape == (2, 1, 33, 47) for m in maps)
    assert all(0 <= m.min() and m.max() <= 1 for m in maps)
    torch.testing.assert_close(fused, maps[-1], rtol=0, atol=0)
    # the four side maps are what the fusion conv sees, the last is what it makes
    seen = {}
    hook = model.classifier.register_forward_hook(lambda mod, inp, out: seen.update(inp=inp[0], out=out))
    with torch.no_grad():
        maps = model(x)
    hook.remove()
    assert seen["inp"].shape == (2, 4, 33, 47)
    for i in range(4):
        torch.testing.assert_close(torch.sigmoid(seen["inp"][:, i:i + 1]), maps[i], rtol=0, atol=1e-7)
    torch.testing.assert_close(torch.sigmoid(seen["out"]), maps[4], rtol=0, atol=1e-7)


def test_random_pidinet_is_seeded_and_leaves_the_global_rng_alone(pidinet_dir):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = random_pidinet("tiny", seed=5)
    load_pidinet(pidinet_dir)
    after = torch.rand(1)
    b = random_pidinet("tiny", seed=5)
    c = random_pidinet("tiny", seed=6)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.init_block.weight, c.init_block.weight)
    assert isinstance(a, PiDiNet) and not a.training and not any(p.requires_grad for p in a.parameters())


# --- where the weights come from --------------------------------------------------------------------------

def test_weights_from_env_file_and_env_folder(pidinet_dir, monkeypatch):
    monkeypatch.setenv("ZSHARM_PIDINET_WEIGHTS", str(pidinet_dir / TINY))
    assert resolve_weights() == pidinet_dir / TINY
    monkeypatch.setenv("ZSHARM_PIDINET_WEIGHTS", str(pidinet_dir))
    assert resolve_weights(variant="full") == pidinet_dir / FULL
    model = load_pidinet(variant="full")
    assert model.init_block.weight.shape == (60, 3, 3, 3)


def test_explicit_path_beats_env(pidinet_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("ZSHARM_PIDINET_WEIGHTS", str(tmp_path / "nowhere.pth"))
    assert resolve_weights(pidinet_dir) == pidinet_dir / TINY
    with pytest.raises(ZsharmError, match="ZSHARM_PIDINET_WEIGHTS"):
        resolve_weights()


def pidinet_cache():
    return cache_dir("pidinet")


def test_missing_weights_offline_is_one_clear_error(monkeypatch, tmp_path):
    with pytest.raises(ZsharmError) as err:
        load_pidinet(tmp_path / "missing.pth")
    assert "not found" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv("ZSHARM_OFFLINE", "1")
    with pytest.raises(ZsharmError) as err:
        load_pidinet()  # empty cache, download forbidden
    assert "ZSHARM_PIDINET_WEIGHTS" in str(err.value) and "\n" not in str(err.value)


def test_failed_download_is_one_clear_error(monkeypatch, closed_port_url):
    monkeypatch.setattr(pidinet, "WEIGHTS_URL", closed_port_url + "/{file}")
    with pytest.raises(ZsharmError) as err:
        load_pidinet()
    message = str(err.value)
    assert closed_port_url in message and "ZSHARM_PIDINET_WEIGHTS" in message and "\n" not in message
    assert list(pidinet_cache().iterdir()) == []  # no partial file left behind


def test_download_lands_in_the_cache_after_its_checksum(pidinet_dir, monkeypatch, loopback_server):
    payload = (pidinet_dir / TINY).read_bytes()
    loopback_server.files["/w/" + TINY] = payload
    monkeypatch.setattr(pidinet, "WEIGHTS_URL", loopback_server.url("/w/{file}"))
    model = load_pidinet()
    assert (pidinet_cache() / TINY).read_bytes() == payload
    assert sorted(p.name for p in pidinet_cache().iterdir()) == [TINY]
    assert torch.equal(model.init_block.weight, checkpoint_tensors(pidinet_dir / TINY)["module.init_block.weight"])

    # the cached copy is used from now on, without the network
    loopback_server.files.clear()
    assert resolve_weights() == pidinet_cache() / TINY
    assert loopback_server.requests == ["/w/" + TINY]


def test_download_with_a_wrong_checksum_is_refused(pidinet_dir, monkeypatch, loopback_server):
    loopback_server.files["/w/" + TINY] = (pidinet_dir / FULL).read_bytes()  # a real checkpoint, not the one asked for
    monkeypatch.setattr(pidinet, "WEIGHTS_URL", loopback_server.url("/w/{file}"))
    with pytest.raises(ZsharmError, match="sha256"):
        load_pidinet(variant="tiny")
    assert [p.name for p in pidinet_cache().iterdir()] == []


def test_corrupt_cached_file_is_refused(pidinet_dir):
    (pidinet_cache() / TINY).write_bytes((pidinet_dir / TINY).read_bytes()[:-10])
    with pytest.raises(ZsharmError, match="sha256"):
        load_pidinet()


@pytest.mark.parametrize("how", ["truncated", "text", "foreign pickle"])
def test_unreadable_file_is_one_clear_error(pidinet_dir, tmp_path, how):
    path = tmp_path / "bad.pth"
    if how == "truncated":
        path.write_bytes((pidinet_dir / TINY).read_bytes()[:100_000])
    elif how == "text":
        path.write_text("not a checkpoint\n")
    else:  # weights_only refuses arbitrary objects
        torch.save({"state_dict": checkpoint_tensors(pidinet_dir / TINY), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ZsharmError, match="cannot read PiDiNet weights") as err:
        load_pidinet(path)
    assert "\n" not in str(err.value)


def test_wrong_layouts_are_one_clear_error(pidinet_dir, tmp_path):
    tiny = checkpoint_tensors(pidinet_dir / TINY)
    full = checkpoint_tensors(pidinet_dir / FULL)
    cases = {
        "full_as_tiny.pth": ({"state_dict": full}, "mis-shaped"),
        "one_missing.pth": ({"state_dict": {k: v for k, v in tiny.items() if "classifier.bias" not in k}},
                            "1 missing"),
        "one_extra.pth": ({"state_dict": {**tiny, "module.extra.weight": torch.zeros(1)}}, "1 unexpected"),
        "no_tensors.pth": ({"epoch": 3, "weights": [1, 2]}, "not a PiDiNet checkpoint"),
        "a_tensor.pth": (torch.zeros(3), "not a PiDiNet checkpoint"),
    }
    for name, (content, reason) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(ZsharmError, match=reason) as err:
            load_pidinet(tmp_path / name, "tiny")
        assert "\n" not in str(err.value), name


def test_bare_state_dict_without_module_prefix_also_loads(pidinet_dir, tmp_path):
    tiny = checkpoint_tensors(pidinet_dir / TINY)
    torch.save({k.removeprefix("module."): v for k, v in tiny.items()}, tmp_path / "bare.pth")
    model = load_pidinet(tmp_path / "bare.pth")
    assert torch.equal(model.classifier.weight, tiny["module.classifier.weight"])


def test_unknown_variant():
    with pytest.raises(ZsharmError, match="variant"):
        load_pidinet(variant="huge")
