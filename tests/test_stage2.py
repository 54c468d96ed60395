"""Stage 2 end to end on tiny models: the invariants the method must keep."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_composite
from zsharm.config import HarmonizeConfig
from zsharm.harmonizer import harmonize
from zsharm.edit.iteration import run_iteration
from zsharm.io.pictures import load_image

QUICK = dict(steps=3, size=128)


def fg_diff(a, b, mask):
    return np.abs(np.asarray(a, float) - np.asarray(b, float))[mask].mean()


def test_identical_prompts_give_back_the_reconstruction(tamed_pipe):
    image, mask = make_composite()
    cfg = HarmonizeConfig.paper(refine=False, use_edges=False, **QUICK)
    res = run_iteration(tamed_pipe, image, mask, "cat bright", "cat bright", cfg, progress=False)
    source, edited = res.edit.images
    assert np.abs(edited.astype(int) - source.astype(int)).max() <= 1
    assert np.abs(source.astype(int) - res.nulltext.reconstruction.astype(int)).max() <= 1
    # with refinement the target's words are pulled towards the background, but on a tamed UNet barely
    res = run_iteration(tamed_pipe, image, mask, "cat bright", "cat bright", cfg.replace(refine=True),
                        progress=False)
    assert fg_diff(res.edit.images[1], res.nulltext.reconstruction, res.mask_work) < 0.5


def test_different_prompts_do_change_the_foreground(tiny_pipe):
    # the counterpart of the test above: the same machinery with a real edit moves the foreground
    image, mask = make_composite()
    cfg = HarmonizeConfig.paper(use_edges=False, **QUICK)
    res = run_iteration(tiny_pipe, image, mask, "cat bright", "cat winter dull", cfg, progress=False)
    assert fg_diff(res.edit.images[1], res.edit.images[0], res.mask_work) > 1.0


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "I;16", "RGB16", "EXIF"])
def test_background_bit_identical_and_input_size_kept(tiny_pipe, tmp_path, mode):
    rgb, mask = make_composite(width=333, height=517, seed=1)
    path = tmp_path / "in.png"
    if mode == "RGB":
        Image.fromarray(rgb).save(path)
    elif mode == "RGBA":
        alpha = np.full(mask.shape, 200, np.uint8)
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    elif mode == "L":
        Image.fromarray(rgb).convert("L").save(path)
    elif mode == "I;16":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257 + 3).save(path)
    elif mode == "RGB16":
        import cv2
        cv2.imwrite(str(path), (rgb[..., ::-1].astype(np.uint16) * 257 + 5))
    elif mode == "EXIF":
        # stored rotated by 90 degrees with an Orientation tag (6) that rotates it back
        path = tmp_path / "in.jpg"
        stored = Image.fromarray(np.rot90(rgb, 1).copy())
        exif = Image.Exif()
        exif[0x0112] = 6
        stored.save(path, exif=exif, quality=95)
    picture = load_image(path)
    assert picture.size == (333, 517)
    cfg = HarmonizeConfig.paper(use_edges=False, steps=2, size=128)
    res = harmonize(picture, mask, "cat bright", "cat winter dull", pipe=tiny_pipe, config=cfg, evaluator=None, progress=False)
    out = res.picture
    assert out.size == picture.size and out.mode == picture.mode and out.pixels.dtype == picture.pixels.dtype
    assert np.array_equal(out.pixels[~mask], picture.pixels[~mask])
    assert not np.array_equal(out.pixels[mask], picture.pixels[mask])


def test_refinement_loss_falls(tiny_pipe):
    image, mask = make_composite()
    cfg = HarmonizeConfig.paper(use_edges=False, refine_iters=6, **QUICK)
    res = run_iteration(tiny_pipe, image, mask, "cat bright", "cat winter greyscale", cfg, progress=False)
    first = [r["loss_emb"] for r in res.refinement.losses if r["step"] == 0]
    assert len(first) == 6 and first[-1] < first[0]
    weights = res.refinement.background_weights[-1]
    assert len(weights) == 3  # "winter" + "grey" + "scale": a word BPE splits in two keeps both tokens
    assert torch.isclose(weights.sum(), torch.tensor(1.0), atol=1e-5)


def test_null_text_optimisation_reduces_the_reconstruction_error(tiny_pipe):
    image, mask = make_composite()
    cfg = HarmonizeConfig.paper(use_edges=False, refine=False, **QUICK)
    errors = {}
    for lr in (0.0, 0.1):
        res = run_iteration(tiny_pipe, image, mask, "cat bright", "cat winter", cfg.replace(nulltext_lr=lr),
                            progress=False)
        x0 = res.inversion.latents[-len(res.nulltext.latents) - 1]
        errors[lr] = float((res.nulltext.latents[-1] - x0).pow(2).mean())
        losses = [r["null_text_mse"] for r in res.nulltext.losses]
    assert errors[0.1] < errors[0.0]
    assert np.isfinite(losses).all()


def test_edge_term_keeps_edges_inside_the_mask(tiny_pipe, random_edges):
    from zsharm.edit.edges import sobel
    image, mask = make_composite()
    cfg = HarmonizeConfig.fast(dtype="fp32", refine=False, steps=4, size=128, nulltext_early_stop=0.0)
    diffs = {}
    for use in (False, True):
        res = run_iteration(tiny_pipe, image, mask, "cat bright", "cat winter", cfg.replace(use_edges=use),
                            progress=False, pidinet=random_edges)
        to_t = lambda a: torch.from_numpy(np.asarray(a, np.float32) / 255).permute(2, 0, 1)[None]
        e_in, e_out = sobel(to_t(res.work_input)), sobel(to_t(res.nulltext.reconstruction))
        m = torch.from_numpy(res.mask_work)
        diffs[use] = float((e_in - e_out).pow(2).mean(1)[0][m].mean())
    assert diffs[True] < diffs[False]


def test_work_image_is_the_edit_inside_the_mask_and_the_input_outside(tiny_pipe):
    # the next iteration starts from the work image: its background must stay the input's, bit for bit
    image, mask = make_composite()
    cfg = HarmonizeConfig.paper(use_edges=False, steps=2, size=128)
    res = run_iteration(tiny_pipe, image, mask, "cat bright", "cat winter dull", cfg, progress=False)
    work, before, m = np.asarray(res.work_image), np.asarray(res.work_input), res.mask_work
    assert np.array_equal(work[~m], before[~m])
    assert np.array_equal(work[m], res.edit.images[1][m])
    assert not np.array_equal(res.edit.images[1][~m], before[~m])  # the edit did touch the background
