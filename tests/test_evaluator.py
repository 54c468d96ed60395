"""The evaluator network, its checkpoint layout, its input, and a tiny training run on CPU."""

import io
import json
import math
import re
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from zsharm.commands.cli import main
from zsharm.errors import ZsharmError
from zsharm.decide.evaluator import HarmonyClassifier, load_evaluator, preprocess, save_checkpoint
from zsharm.decide.training import find_iharmony_samples, find_photo_samples, HarmonyDataset, perturb_foreground, roc_auc, split_samples

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def expected_keys(layers=(3, 4, 6, 3)):
    """The authors' checkpoint keys, written out from their layout: inp_encoder, encoder.0 (bn1),
    encoder.3-6 (layer1-4 of torchvision Bottlenecks), classify_fc."""
    keys = {"inp_encoder.weight", "classify_fc.weight", "classify_fc.bias"}
    keys |= {f"encoder.0.{p}" for p in BN}
    for stage, blocks in enumerate(layers):
        for block in range(blocks):
            prefix = f"encoder.{3 + stage}.{block}"
            for i in (1, 2, 3):
                keys.add(f"{prefix}.conv{i}.weight")
                keys |= {f"{prefix}.bn{i}.{p}" for p in BN}
            if block == 0:
                keys.add(f"{prefix}.downsample.0.weight")
                keys |= {f"{prefix}.downsample.1.{p}" for p in BN}
    return keys


def resnet50_parameter_count(in_channels=4, classes=2):
    """Parameters of a ResNet-50 (torchvision layout) with an `in_channels` stem and a `classes` head, by formula."""
    total = 64 * in_channels * 7 * 7 + 2 * 64  # stem conv + bn1
    channels = 64
    for stage, blocks in enumerate((3, 4, 6, 3)):
        width = 64 * 2**stage
        for block in range(blocks):
            total += channels * width + 2 * width          # 1x1 + bn
            total += width * width * 9 + 2 * width         # 3x3 + bn
            total += width * 4 * width + 2 * 4 * width     # 1x1 + bn
            if block == 0:
                total += channels * 4 * width + 2 * 4 * width  # downsample conv + bn
            channels = 4 * width
    return total + channels * classes + classes


def test_authors_layout_and_size():
    model = HarmonyClassifier()
    assert set(model.state_dict()) == expected_keys()
    count = sum(p.numel() for p in model.parameters())
    assert count == resnet50_parameter_count() == 23_515_266
    # the torchvision ResNet-50 (25,557,032 with a 3-channel stem and 1000 classes) agrees with the formula
    assert resnet50_parameter_count(3, 1000) == 25_557_032
    assert model.inp_encoder.weight.shape == (64, 4, 7, 7) and model.classify_fc.weight.shape == (2, 2048)


def random_model(arch_layers=(1, 1, 1, 1), width=8, seed=0):
    torch.manual_seed(seed)
    model = HarmonyClassifier(arch_layers, width)
    with torch.no_grad():  # non-trivial batch-norm statistics, so a wrong buffer would change the score
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
        tame_head(model.eval())
    return model


def tame_head(model):
    """Re-aim the random head so scores of photo-like inputs spread over (0, 1). A random deep network's features
    share one dominant direction (cosine ~0.999 between any two photos), so its raw softmax is saturated (1e-20)
    and every score comparison would pass trivially; the head is made orthogonal to the mean feature of a few
    composites (the demo's and synthetic ones) and scaled so their logits differ by about 1."""
    from conftest import REPO, make_composite
    images = [np.asarray(Image.open(REPO / "data" / "demo" / "composite.png").convert("RGB"))]
    masks = [np.asarray(Image.open(REPO / "data" / "demo" / "mask.png")) > 127]
    for seed in range(3):
        image, mask = make_composite(seed=seed)
        images.append(image)
        masks.append(mask)
    batch = [preprocess(image, mask) for image, mask in zip(images, masks)]
    x, m = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
    features = torch.flatten(model.avgpool(model.encoder(model.inp_encoder(torch.cat([x, m], 1)))), 1)
    mean = features.mean(0)
    w = model.classify_fc.weight[1] - model.classify_fc.weight[0]
    w = w - (w @ mean) / (mean @ mean) * mean
    w = w / ((features - mean) @ w).std()
    model.classify_fc.weight.copy_(torch.stack([-w / 2, w / 2]))
    model.classify_fc.bias.copy_(torch.stack([mean @ w / 2, -mean @ w / 2]))


def picture(seed=0, size=(40, 30)):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    mask = np.zeros((size[1], size[0]), bool)
    mask[5:20, 10:30] = True
    return image, mask


def reference_score(model, image, mask):
    """The authors' inference, written out: cv2 bilinear resize to 256, (x/255 - .5)/.5, mask in [0,1],
    cat(image, mask), softmax, class 1."""
    rgb = cv2.resize(np.asarray(image), (256, 256), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    m = cv2.resize(mask.astype(np.float32), (256, 256), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy((rgb / 255 - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        return torch.softmax(model(x, torch.from_numpy(m)[None, None]), 1)[0, 1].item()


def test_full_size_checkpoint_in_the_authors_layout_loads(tmp_path):
    # a random ResNet-50 saved exactly as the authors' bestModel.pth is: a plain torch-pickled state_dict
    model = random_model((3, 4, 6, 3), 64)
    path = tmp_path / "bestModel.pth"
    torch.save(model.state_dict(), path)
    evaluator = load_evaluator(path, device="cpu")
    assert evaluator.model.layers == (3, 4, 6, 3) and evaluator.model.width == 64
    image, mask = picture()
    assert evaluator.score(image, mask) == pytest.approx(reference_score(model, image, mask), abs=1e-6)


@pytest.mark.parametrize("form", ["pth", "pt-wrapped", "pth-dataparallel", "safetensors"])
def test_checkpoint_forms_load(tmp_path, form):
    model = random_model()
    state = model.state_dict()
    if form == "safetensors":
        path = save_checkpoint(model, tmp_path / "m.safetensors")
    else:
        path = tmp_path / ("m.pt" if form == "pt-wrapped" else "m.pth")
        if form == "pt-wrapped":
            state = {"state_dict": state, "epoch": 3}
        if form == "pth-dataparallel":
            state = {"module." + k: v for k, v in state.items()}
        torch.save(state, path)
    evaluator = load_evaluator(path, device="cpu")
    image, mask = picture(1)
    got = evaluator(image, mask)
    assert 0 <= got <= 1
    assert got == pytest.approx(reference_score(model, image, mask), abs=1e-6)
    assert set(evaluator.model.state_dict()) == expected_keys((1, 1, 1, 1))


def test_bad_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(ZsharmError, match="does not exist"):
        load_evaluator(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ZsharmError, match="cannot read"):
        load_evaluator(tmp_path / "junk.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ZsharmError, match="not an evaluator checkpoint"):
        load_evaluator(tmp_path / "other.pth")
    state = random_model().state_dict()
    state["classify_fc.weight"] = torch.zeros(2, 7)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(ZsharmError, match="does not fit"):
        load_evaluator(tmp_path / "wrong.pth")


def test_random_spec_warns_and_is_reproducible():
    with pytest.warns(UserWarning, match="random weights"):
        a = load_evaluator("random:tiny", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = load_evaluator("random:tiny", device="cpu")
    image, mask = picture(2)
    assert a.score(image, mask) == b.score(image, mask)


def test_mask_is_the_fourth_channel_and_is_not_normalised():
    model = random_model()
    with torch.no_grad():
        model.inp_encoder.weight[:, :3] = 0  # only the mask channel reaches the network
    evaluator = load_evaluator_from(model)
    image_a, mask = picture(3)
    image_b, _ = picture(4)
    assert evaluator.score(image_a, mask) == pytest.approx(evaluator.score(image_b, mask), abs=1e-6)
    other = np.zeros_like(mask)
    other[10:25, 2:12] = True
    assert evaluator.score(image_a, mask) != pytest.approx(evaluator.score(image_a, other), abs=1e-6)
    x, m = preprocess(Image.new("RGB", (10, 10), (255, 0, 127)), np.ones((10, 10), bool), size=16)
    assert x.shape == (3, 16, 16) and m.shape == (1, 16, 16)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, -1.0, 127 / 255 * 2 - 1]))
    assert m.min() == 1 and m.max() == 1
    _, m8 = preprocess(image_a, mask.astype(np.uint8) * 255, size=32)  # an 8-bit mask image reads the same
    _, m1 = preprocess(image_a, mask, size=32)
    assert torch.equal(m8, m1) and m1.max() == 1


def test_unusable_device_is_a_clear_error():
    with pytest.raises(ZsharmError, match="device"):
        load_evaluator_from(random_model(), device="nodevice")
    if not torch.cuda.is_available():
        with pytest.raises(ZsharmError, match="cannot use device cuda"):
            load_evaluator_from(random_model(), device="cuda")


def load_evaluator_from(model, device="cpu"):
    from zsharm.decide.evaluator import Evaluator

    return Evaluator(model, device)


def test_a_mask_of_another_resolution_is_squashed_on_its_own():
    """The authors pair the 512x512 blend with the original mask file: each is resized to 256x256 alone."""
    model = random_model()
    evaluator = load_evaluator_from(model)
    image, _ = picture(size=(40, 30))
    soft = np.zeros((90, 160), np.float32)  # the same frame at another size, with soft values
    soft[15:60, 40:120] = 1.0
    soft[15:60, 36:40] = 0.5
    rgb = cv2.resize(np.asarray(image), (256, 256), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    m = cv2.resize(soft, (256, 256), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy((rgb / 255 - 0.5) / 0.5).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = torch.softmax(model(x, torch.from_numpy(m)[None, None]), 1)[0, 1].item()
    assert evaluator.score(image, soft) == pytest.approx(expected, abs=1e-6)
    for bad in (np.zeros((30, 40, 3)), np.full((30, 40), 2.0), np.full((30, 40), np.nan)):
        with pytest.raises(ZsharmError, match="mask"):
            evaluator.score(image, bad)


# ---------------------------------------------------------------- the authors' preprocessing, on real photos


def authors_harmon_detect(model, img_path, mask_path):
    """Their inference.py `harmon_detect`, step by step with OpenCV (albumentations' Resize is cv2.resize
    INTER_LINEAR; ToTensor divides uint8 by 255 and keeps floats)."""
    bgr = cv2.imread(str(img_path))
    rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (256, 256), interpolation=cv2.INTER_LINEAR)
    image = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    mask = cv2.imread(str(mask_path))[:, :, 0].astype(np.float32) / 255.0
    mask = torch.from_numpy(cv2.resize(mask, (256, 256), interpolation=cv2.INTER_LINEAR))[None]
    with torch.no_grad():
        out = torch.softmax(model(image[None], mask[None]), dim=1)
    return image, mask, out[0][1].item()


@pytest.fixture(scope="module")
def real_photo_files(tmp_path_factory):
    """The demo composite and mask (PNG), and the files the authors' loop scores: the blend at 512x512 saved
    by PIL as JPEG (their `image.save(...jpg)`), and a soft JPEG mask at the original size (like their demo's)."""
    from conftest import REPO
    folder = tmp_path_factory.mktemp("photos")
    composite, mask = REPO / "data" / "demo" / "composite.png", REPO / "data" / "demo" / "mask.png"
    blend = folder / "00_repeat_blend_prompt00.jpg"
    Image.open(composite).convert("RGB").resize((512, 512), Image.LANCZOS).save(blend)
    soft = cv2.GaussianBlur(np.asarray(Image.open(mask).convert("L")), (0, 0), 3)
    soft_mask = folder / "mask.jpg"
    Image.fromarray(soft).save(soft_mask)
    return {"png": (composite, mask), "jpeg": (blend, soft_mask)}


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_preprocessing_equals_the_authors_opencv_steps_on_real_photos(real_photo_files, kind):
    from zsharm.decide.evaluator import read_image_as_authors, read_mask_as_authors
    image_path, mask_path = real_photo_files[kind]
    model = random_model((3, 4, 6, 3), 64, seed=1)
    want_image, want_mask, want_score = authors_harmon_detect(model, image_path, mask_path)
    soft = read_mask_as_authors(mask_path)
    if kind == "jpeg":
        assert 0 < ((soft > 0) & (soft < 1)).mean() < 0.5  # the soft values reach the network
    x, m = preprocess(read_image_as_authors(image_path), soft)
    assert torch.equal(x, want_image) and torch.equal(m, want_mask)
    assert load_evaluator_from(model).score_files(image_path, mask_path) == pytest.approx(want_score, abs=1e-5)


def test_score_saved_is_the_score_of_the_jpeg_the_authors_write(real_photo_files, tmp_path):
    from zsharm.decide.evaluator import read_mask_as_authors
    blend_source, soft_mask = real_photo_files["jpeg"]
    image = Image.open(real_photo_files["png"][0]).convert("RGB").resize((512, 512), Image.LANCZOS)
    image.save(tmp_path / "blend.jpg")  # what their loop writes for this image
    model = random_model((3, 4, 6, 3), 64, seed=2)
    evaluator = load_evaluator_from(model)
    _, _, theirs = authors_harmon_detect(model, tmp_path / "blend.jpg", soft_mask)
    assert evaluator.score_saved(image, read_mask_as_authors(soft_mask)) == pytest.approx(theirs, abs=1e-5)
    assert evaluator.score(image, read_mask_as_authors(soft_mask)) != pytest.approx(theirs, abs=1e-7)


# ---------------------------------------------------------------- the authors' checkpoint, fetched


@pytest.fixture(scope="module")
def authors_layout():
    """A random ResNet-50 saved as their bestModel.pth is: torch.save of the plain state_dict."""
    model = random_model((3, 4, 6, 3), 64, seed=3)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return model, buffer.getvalue()


def blob_of(data: bytes, folder) -> str:
    from zsharm.cache import git_blob_id
    (folder / "blob").write_bytes(data)
    return git_blob_id(folder / "blob")


@pytest.fixture
def serve_authors(loopback_server, monkeypatch, tmp_path):
    """Point the authors' URL at a loopback server holding `data`, expecting the blob id of `expected`."""
    from zsharm.decide import evaluator as module
    monkeypatch.setenv("ZSHARM_CACHE", str(tmp_path / "cache"))
    for name in ("ZSHARM_OFFLINE", "HF_HUB_OFFLINE", module.WEIGHTS_ENV):
        monkeypatch.delenv(name, raising=False)

    def serve(data: bytes, expected: bytes = None):
        loopback_server.files["/bestModel.pth"] = data
        monkeypatch.setattr(module, "AUTHORS_URL", loopback_server.url("/bestModel.pth"))
        monkeypatch.setattr(module, "AUTHORS_GIT_BLOB", blob_of(data if expected is None else expected, tmp_path))
        return loopback_server
    return serve


def cached_files(tmp_path):
    folder = tmp_path / "cache" / "evaluator"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_the_authors_evaluator_is_fetched_verified_cached_and_loaded_strictly(serve_authors, authors_layout,
                                                                               tmp_path):
    model, data = authors_layout
    server = serve_authors(data)
    evaluator = load_evaluator("authors", device="cpu")
    assert cached_files(tmp_path) == ["bestModel.pth"]
    assert (tmp_path / "cache" / "evaluator" / "bestModel.pth").read_bytes() == data
    loaded = evaluator.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    image, mask = picture(5)
    score = evaluator.score(image, mask)
    assert 0 <= score <= 1 and score == pytest.approx(reference_score(model, image, mask), abs=1e-6)
    load_evaluator("authors", device="cpu")  # the cached copy, checked again, not fetched again
    assert server.requests == ["/bestModel.pth"]


def test_a_tampered_authors_checkpoint_is_refused_and_nothing_is_cached(serve_authors, authors_layout, tmp_path):
    _, data = authors_layout
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 0x01
    serve_authors(bytes(tampered), expected=data)
    with pytest.raises(ZsharmError, match="fails its check") as error:
        load_evaluator("authors", device="cpu")
    message = str(error.value)
    assert "\n" not in message and "ZSHARM_EVALUATOR_WEIGHTS" in message and "bestModel.pth" in message
    assert cached_files(tmp_path) == []


def test_a_checkpoint_missing_a_key_is_refused_though_its_blob_matches(serve_authors, authors_layout, tmp_path):
    model, _ = authors_layout
    state = dict(model.state_dict())
    del state["encoder.6.2.bn3.running_var"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    serve_authors(buffer.getvalue())
    with pytest.raises(ZsharmError, match="not the authors' evaluator layout.*running_var"):
        load_evaluator("authors", device="cpu")


def test_a_server_that_is_down_gives_one_line_naming_the_fix(serve_authors, closed_port_url, monkeypatch, tmp_path):
    from zsharm.decide import evaluator as module
    serve_authors(b"unused")
    monkeypatch.setattr(module, "AUTHORS_URL", closed_port_url)
    with pytest.raises(ZsharmError) as error:
        load_evaluator("authors", device="cpu")
    message = str(error.value)
    assert "\n" not in message and closed_port_url in message
    assert "ZSHARM_EVALUATOR_WEIGHTS" in message and str(tmp_path / "cache" / "evaluator" / "bestModel.pth") in message
    assert cached_files(tmp_path) == []


def test_offline_the_authors_evaluator_is_not_fetched(serve_authors, authors_layout, monkeypatch, tmp_path):
    server = serve_authors(authors_layout[1])
    monkeypatch.setenv("ZSHARM_OFFLINE", "1")
    with pytest.raises(ZsharmError, match="offline.*ZSHARM_EVALUATOR_WEIGHTS"):
        load_evaluator("authors", device="cpu")
    assert server.requests == [] and cached_files(tmp_path) == []


def test_a_local_copy_is_used_only_if_it_is_theirs(serve_authors, authors_layout, monkeypatch, tmp_path):
    model, data = authors_layout
    server = serve_authors(data)
    (tmp_path / "mine.pth").write_bytes(data)
    monkeypatch.setenv("ZSHARM_EVALUATOR_WEIGHTS", str(tmp_path / "mine.pth"))
    image, mask = picture(6)
    assert load_evaluator("authors", "cpu").score(image, mask) == pytest.approx(reference_score(model, image, mask),
                                                                                abs=1e-6)
    (tmp_path / "other.pth").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    monkeypatch.setenv("ZSHARM_EVALUATOR_WEIGHTS", str(tmp_path / "other.pth"))
    with pytest.raises(ZsharmError, match="is not the authors' bestModel.pth"):
        load_evaluator("authors", "cpu")
    assert server.requests == [] and cached_files(tmp_path) == []


def test_the_authors_url_is_pinned_to_a_commit_of_their_repository():
    from zsharm.decide import evaluator as module
    assert re.fullmatch(r"https://github\.com/WindVChen/Diff-Harmonization/raw/[0-9a-f]{40}/"
                        r"HarmonizationDetect/exp/bestModel\.pth", module.AUTHORS_URL)
    assert module.AUTHORS_COMMIT in module.AUTHORS_URL and re.fullmatch(r"[0-9a-f]{40}", module.AUTHORS_GIT_BLOB)


def test_course_evaluator_is_the_authors_when_fetchable_else_a_labelled_random_network(serve_authors,
                                                                                       authors_layout,
                                                                                       monkeypatch):
    from zsharm.decide.evaluator import course_evaluator
    monkeypatch.delenv("ZSHARM_EVALUATOR", raising=False)
    model, data = authors_layout
    serve_authors(data)
    monkeypatch.setenv("ZSHARM_OFFLINE", "1")
    evaluator, label = course_evaluator(device="cpu", fallback="random:tiny")
    assert "RANDOM" in label and "offline" in label and evaluator.model.width == 8
    monkeypatch.delenv("ZSHARM_OFFLINE")
    evaluator, label = course_evaluator(device="cpu")
    assert label.startswith("the authors' evaluator") and evaluator.name == "authors"
    image, mask = picture(7)
    assert evaluator.score(image, mask) == pytest.approx(reference_score(model, image, mask), abs=1e-6)


def test_roc_auc_known_answers():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # pairs (pos, neg): (0.35,0.1) (0.35,0.4) (0.8,0.1) (0.8,0.4) (0.4,0.1) (0.4,0.4)=tie -> 4.5 of 6
    assert roc_auc([0, 1, 0, 1, 1], [0.1, 0.35, 0.4, 0.8, 0.4]) == pytest.approx(4.5 / 6)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_perturbation_changes_only_the_masked_region():
    rng = np.random.default_rng(0)
    rgb = rng.integers(30, 220, (32, 48, 3), dtype=np.uint8)
    mask = np.zeros((32, 48), np.float32)
    mask[8:24, 10:30] = 1
    changed = 0
    for seed in range(20):
        out = perturb_foreground(rgb, mask, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == rgb.shape
        assert (out[mask == 0] == rgb[mask == 0]).all()
        changed += np.abs(out[mask == 1].astype(int) - rgb[mask == 1]).mean() > 2
    assert changed >= 18  # every draw applies at least one clearly visible change


# ---------------------------------------------------------------- training data and a tiny run


def make_photos(root, n, size=64, seed=0):
    """Smooth random photos (colour gradients with grain) with rectangular masks, as images/ + masks/."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:size, :size] / size
    for i in range(n):
        base, grad = rng.uniform(0.2, 0.8, 3), rng.uniform(-0.3, 0.3, (2, 3))
        rgb = base + yy[..., None] * grad[0] + xx[..., None] * grad[1] + rng.normal(0, 0.03, (size, size, 3))
        Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
        mask = np.zeros((size, size), np.uint8)
        y0, x0 = rng.integers(8, 28, 2)
        mask[y0:y0 + rng.integers(16, 30), x0:x0 + rng.integers(16, 30)] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")


def test_synthetic_samples_pair_each_photo_with_its_composite(tmp_path):
    make_photos(tmp_path / "photos", 6, size=32)
    samples = find_photo_samples(tmp_path / "photos")
    assert len(samples) == 12 and sum(s.label for s in samples) == 6
    assert all(s.perturb == (s.label == 0) for s in samples)
    train, val = split_samples(samples, 0.34, seed=0)
    assert len(val) == 4 and len(train) == 8
    assert not {s.group for s in train} & {s.group for s in val}  # a photo never straddles the split
    dataset = HarmonyDataset(samples, 16, train=False)
    x_real, m_real, y_real = dataset[0]
    x_fake, m_fake, y_fake = dataset[1]
    assert (y_real, y_fake) == (1, 0) and torch.equal(m_real, m_fake)
    outside = m_real[0] == 0
    assert torch.allclose(x_real[:, outside], x_fake[:, outside], atol=2 / 255 * 2)
    assert not torch.allclose(x_real[:, ~outside], x_fake[:, ~outside], atol=2 / 255 * 2)
    assert torch.equal(dataset[1][0], x_fake)  # validation samples are the same every time


def test_iharmony_layout_pairs_composites_with_their_real_images(tmp_path):
    for subset, stems in (("HAdobe5k", ["a0001_1_1", "a0001_1_2", "a0002_1_1"]), ("HCOCO", ["c10_200_1"])):
        for stem in stems:
            mask_stem, real_stem = stem.rsplit("_", 1)[0], stem.rsplit("_", 2)[0]
            for folder, name in (("composite_images", stem + ".jpg"), ("masks", mask_stem + ".png"),
                                 ("real_images", real_stem + ".jpg")):
                path = tmp_path / subset / folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                image = Image.new("RGB", (8, 8))
                if folder == "masks":  # a mask with an object in it (empty ones are refused)
                    image.paste((255, 255, 255), (2, 2, 6, 6))
                image.save(path)
    samples = find_iharmony_samples(tmp_path)
    pairs = {(s.image.name, s.mask.name, s.label) for s in samples}
    assert pairs == {("a0001_1_1.jpg", "a0001_1.png", 0), ("a0001_1_2.jpg", "a0001_1.png", 0),
                     ("a0001.jpg", "a0001_1.png", 1), ("a0002_1_1.jpg", "a0002_1.png", 0),
                     ("a0002.jpg", "a0002_1.png", 1), ("c10_200_1.jpg", "c10_200.png", 0),
                     ("c10.jpg", "c10_200.png", 1)}
    assert len(samples) == 8  # one real per composite, so the classes are balanced
    # a subset's train list keeps its test composites out
    (tmp_path / "HAdobe5k" / "HAdobe5k_train.txt").write_text("a0001_1_2.jpg\na0002_1_1.jpg\n")
    names = {s.image.name for s in find_iharmony_samples(tmp_path) if s.label == 0}
    assert names == {"a0001_1_2.jpg", "a0002_1_1.jpg", "c10_200_1.jpg"}
    assert len(find_iharmony_samples(tmp_path, split=None)) == 8
    # and trains end to end (one quick epoch)
    from zsharm.decide.training import train_evaluator

    metrics = train_evaluator(tmp_path, tmp_path / "ih.safetensors", epochs=1, batch_size=4, size=32, arch="tiny",
                              device="cpu", val_fraction=0.34, progress=False)
    assert metrics["train_samples"] + metrics["val_samples"] == 6 and metrics["val_samples"] == 2
    assert load_evaluator(tmp_path / "ih.safetensors", device="cpu").size == 32


def test_train_evaluator_tiny_cpu_run(tmp_path, capsys):
    make_photos(tmp_path / "photos", 32)
    out = tmp_path / "ckpt" / "tiny.safetensors"
    code = main(["train-evaluator", str(tmp_path / "photos"), "--out", str(out), "--synthetic", "--epochs", "6",
                 "--batch-size", "8", "--size", "64", "--arch", "tiny", "--device", "cpu", "--val-fraction", "0.25",
                 "--lr", "3e-3", "--quiet"])
    assert code == 0
    assert "val accuracy" in capsys.readouterr().out
    metrics = json.loads(out.with_suffix(".json").read_text())
    history = metrics["history"]
    assert len(history) == 6 and metrics["train_samples"] == 48 and metrics["val_samples"] == 16
    losses = [row["train_loss"] for row in history]
    assert np.mean(losses[-2:]) < losses[0]  # training loss falls
    assert min(losses[-2:]) < math.log(2)  # below chance level (about 0.57 here)
    for row in history:
        assert 0 <= row["val_accuracy"] <= 1 and 0 <= row["val_auc"] <= 1
    best = max(history, key=lambda r: (r["val_auc"], r["val_accuracy"]))
    assert metrics["best_epoch"] == best["epoch"]
    # the saved checkpoint is the best epoch's network and loads as an evaluator
    evaluator = load_evaluator(out, device="cpu")
    assert evaluator.size == 64 and evaluator.model.layers == (1, 1, 1, 1) and evaluator.model.width == 8
    image = Image.open(tmp_path / "photos" / "images" / "000.png").convert("RGB")
    mask = np.asarray(Image.open(tmp_path / "photos" / "masks" / "000.png")) > 127
    assert 0 <= evaluator.score(image, mask) <= 1
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_train_evaluator_refuses_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZsharmError, match="iHarmony4"):
        from zsharm.decide.training import train_evaluator

        train_evaluator(tmp_path / "empty", tmp_path / "x.safetensors", progress=False)
    assert main(["train-evaluator", str(tmp_path / "empty"), "--out", str(tmp_path / "x.pth")]) == 2


def test_init_from_torchvision_layout_weights(tmp_path):
    from zsharm.decide.evaluator import load_init

    source = random_model(seed=1)
    torchvision_state = {"fc.weight": torch.zeros(1000, 256), "fc.bias": torch.zeros(1000)}
    for key, value in source.state_dict().items():
        if key == "inp_encoder.weight":
            torchvision_state["conv1.weight"] = value[:, :3].clone()
        elif key.startswith("encoder.0."):
            torchvision_state["bn1." + key[len("encoder.0."):]] = value
        elif key.startswith("encoder."):
            stage, rest = key[len("encoder."):].split(".", 1)
            torchvision_state[f"layer{int(stage) - 2}.{rest}"] = value
    torch.save(torchvision_state, tmp_path / "resnet.pth")
    model = random_model(seed=2)
    head = model.classify_fc.weight.clone()
    load_init(model, tmp_path / "resnet.pth")
    state, expected = model.state_dict(), source.state_dict()
    for key in expected:
        if key == "inp_encoder.weight":
            assert torch.equal(state[key][:, :3], expected[key][:, :3]) and not state[key][:, 3].any()
        elif not key.startswith("classify_fc."):
            assert torch.equal(state[key], expected[key]), key
    assert torch.equal(model.classify_fc.weight, head)  # the ImageNet classifier is not carried over


def test_a_checkpoint_holding_objects_is_refused_without_torchs_unsafe_advice(tmp_path):
    import argparse

    from zsharm.decide.evaluator import load_state
    path = tmp_path / "objects.pth"
    torch.save({"inp_encoder.weight": torch.zeros(1), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ZsharmError) as error:
        load_state(path)
    message = str(error.value)
    assert "tensor-only" in message and "weights_only" not in message and "\n" not in message
