"""Pictures and masks in and out: every mode and depth round-trips, the background of a new foreground is the
input bit for bit, EXIF orientation is applied, and each bad input gives one clear line and no stray file."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

import zsharm.io.files as io_files
import zsharm.io.pictures as io_pictures
import zsharm.io.saving as io_saving
from zsharm.errors import ZsharmError
from zsharm.io.masks import load_mask
from zsharm.io.pictures import Picture, load_image, work_size
from zsharm.io.saving import save_picture

H, W = 517, 333  # odd on purpose
KINDS = [("L", np.uint8), ("LA", np.uint8), ("RGB", np.uint8), ("RGBA", np.uint8),
         ("L", np.uint16), ("RGB", np.uint16), ("RGBA", np.uint16), ("LA", np.uint16)]


def random_picture(mode, dtype, seed=0, size=(H, W)):
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    pixels = rng.integers(0, top, size=size + (io_pictures.MODES[mode],), endpoint=True).astype(dtype)
    return Picture(pixels, mode)


def blob_mask(size=(H, W)):
    yy, xx = np.mgrid[:size[0], :size[1]]
    return (yy - size[0] * 0.4) ** 2 + (xx - size[1] * 0.6) ** 2 < (min(size) * 0.3) ** 2


def png_bytes(samples: np.ndarray, colour_type: int, chunks=()) -> bytes:
    """A 16-bit PNG written by hand: neither PIL nor OpenCV writes 16-bit grey + alpha or an eXIf chunk."""
    height, width = samples.shape[:2]
    rows = samples.reshape(height, -1).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
    extra = b"".join(chunk(kind, body) for kind, body in chunks)
    return b"\x89PNG\r\n\x1a\n" + header + extra + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def assert_one_line(error: pytest.ExceptionInfo, *words):
    text = str(error.value)
    assert "\n" not in text and text
    for word in words:
        assert str(word) in text, (word, text)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("mode,dtype", KINDS)
def test_png_round_trip_keeps_every_bit(tmp_path, mode, dtype):
    picture = random_picture(mode, dtype)
    loaded = load_image(save_picture(picture, tmp_path / "out.png"))
    if mode == "LA" and dtype == np.uint16:  # stored as 16-bit RGBA, as documented: nothing lost
        assert loaded.mode == "RGBA"
        np.testing.assert_array_equal(loaded.pixels, picture.pixels[..., [0, 0, 0, 1]])
    else:
        assert loaded.mode == mode and loaded.pixels.dtype == dtype
        np.testing.assert_array_equal(loaded.pixels, picture.pixels)
    assert loaded.size == (W, H)


@pytest.mark.parametrize("mode,dtype", [("L", np.uint16), ("RGB", np.uint16), ("RGBA", np.uint16),
                                        ("RGB", np.uint8), ("LA", np.uint8)])
def test_tiff_round_trip_keeps_every_bit(tmp_path, mode, dtype):
    picture = random_picture(mode, dtype, seed=1)
    loaded = load_image(save_picture(picture, tmp_path / "deep" / "folder" / "out.tif"))
    assert loaded.mode == mode
    np.testing.assert_array_equal(loaded.pixels, picture.pixels)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_webp_and_bmp_are_lossless_for_what_they_hold(tmp_path, mode):
    picture = random_picture(mode, np.uint8, seed=2, size=(37, 51))
    webp = load_image(save_picture(picture, tmp_path / "a.webp"))
    np.testing.assert_array_equal(webp.rgb(), picture.rgb())  # grey comes back as RGB, same values
    if mode != "RGBA":
        bmp = load_image(save_picture(picture, tmp_path / "a.bmp"))
        np.testing.assert_array_equal(bmp.pixels, picture.pixels)


def test_sixteen_bit_grey_alpha_png_is_read_at_full_depth(tmp_path):
    samples = random_picture("LA", np.uint16, seed=3, size=(31, 17)).pixels
    path = tmp_path / "la16.png"
    path.write_bytes(png_bytes(samples, colour_type=4))
    picture = load_image(path)
    assert picture.mode == "LA" and picture.pixels.dtype == np.uint16
    np.testing.assert_array_equal(picture.pixels, samples)


def test_pil_modes_are_brought_to_picture_modes(tmp_path):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (23, 29, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(tmp_path / "p.png")
    transparent = palette.copy()
    transparent.info["transparency"] = 3
    transparent.save(tmp_path / "pt.png", transparency=3)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(rgb[..., 0] > 128).save(tmp_path / "bilevel.png")
    Image.fromarray(np.stack([rgb[..., 0], rgb[..., 1]], 2), "LA").save(tmp_path / "la.png")
    grey16 = rng.integers(0, 65536, (23, 29)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")

    expect = {"p.png": ("RGB", "RGB"), "pt.png": ("RGBA", "RGBA"), "cmyk.jpg": ("RGB", "RGB"),
              "bilevel.png": ("L", "L"), "la.png": ("LA", "LA")}
    for name, (mode, pil_mode) in expect.items():
        picture = load_image(tmp_path / name)
        assert picture.mode == mode, name
        reference = np.asarray(Image.open(tmp_path / name).convert(pil_mode))
        np.testing.assert_array_equal(picture.pixels, reference.reshape(picture.pixels.shape), err_msg=name)
    assert set(np.unique(load_image(tmp_path / "bilevel.png").pixels)) == {0, 255}
    deep = load_image(tmp_path / "g16.png")
    assert deep.mode == "L" and deep.bits == 16
    np.testing.assert_array_equal(deep.pixels[..., 0], grey16)
    # 32-bit integer grey ("I") holding 16-bit values is read as 16-bit grey
    as_int = load_image(Image.fromarray(grey16.astype(np.int32), "I"))
    np.testing.assert_array_equal(as_int.pixels[..., 0], grey16)


def test_arrays_keep_their_depth():
    rng = np.random.default_rng(5)
    eight = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(eight.astype(np.float32) / 255).pixels, eight)
    soft = rng.random((9, 11, 3))
    picture = load_image(soft)
    assert picture.bits == 16
    assert np.abs(picture.rgb() - soft).max() <= 0.5 / 65535 + 1e-7
    assert load_image(eight.astype(np.int64)).pixels.dtype == np.uint8
    assert load_image(np.eye(4, dtype=bool)).pixels.max() == 255
    assert load_image(rng.integers(0, 256, (5, 6, 2), dtype=np.uint8)).mode == "LA"


def test_icc_profile_travels_with_the_picture(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(tmp_path / "a.png", icc_profile=icc)
    picture = load_image(tmp_path / "a.png")
    assert picture.icc_profile == icc
    for name in ("b.png", "b.jpg", "b.tif"):
        assert Image.open(save_picture(picture, tmp_path / name, lossy=True)).info.get("icc_profile") == icc, name


# ---------------------------------------------------------------- EXIF orientation


def test_exif_rotated_jpeg_is_turned_upright(tmp_path):
    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:20, :30] = (250, 20, 20)  # a red block top-left
    stored = np.rot90(upright, 1)  # what a camera held sideways stores; Orientation 6 turns it back
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "a.jpg", quality=98,
                                                       exif=exif_with_orientation(6).tobytes())
    picture = load_image(tmp_path / "a.jpg")
    assert picture.size == (60, 40)
    assert np.abs(picture.pixels.astype(int) - upright).mean() < 3
    pil_upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "a.jpg")))
    np.testing.assert_array_equal(picture.pixels, pil_upright)
    # a PIL image handed over directly is turned too
    np.testing.assert_array_equal(load_image(Image.open(tmp_path / "a.jpg")).pixels, pil_upright)
    mask = load_mask(tmp_path / "a.jpg")
    assert mask.shape == (40, 60) and mask[:20, :30].all() and not mask[20:, 30:].any()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_sixteen_bit_files_follow_exif_orientation_like_pil(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    eight = rng.integers(0, 256, (7, 12, 3), dtype=np.uint8)
    exif = exif_with_orientation(orientation).tobytes()
    Image.fromarray(eight).save(tmp_path / "a8.png", exif=exif)
    # a PNG eXIf chunk holds the TIFF block without the "Exif\0\0" prefix
    deep_png = png_bytes(eight.astype(np.uint16) * 257, colour_type=2, chunks=[(b"eXIf", exif[6:])])
    (tmp_path / "a16.png").write_bytes(deep_png)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "a8.png")))
    deep = load_image(tmp_path / "a16.png")
    assert deep.bits == 16 and deep.mode == "RGB"
    np.testing.assert_array_equal(deep.pixels, reference.astype(np.uint16) * 257)
    np.testing.assert_array_equal(load_image(tmp_path / "a8.png").pixels, reference)


# ---------------------------------------------------------------- new foregrounds


@pytest.mark.parametrize("mode,dtype", KINDS)
def test_replace_foreground_keeps_background_bit_identical(mode, dtype):
    picture = random_picture(mode, dtype, seed=6)
    mask = blob_mask()
    new_rgb = np.random.default_rng(7).random((H, W, 3)).astype(np.float32)
    result = picture.replace_foreground(new_rgb, mask)
    assert result.mode == mode and result.pixels.dtype == dtype and result.size == picture.size
    np.testing.assert_array_equal(result.pixels[~mask], picture.pixels[~mask])
    if picture.has_alpha:
        np.testing.assert_array_equal(result.pixels[..., -1], picture.pixels[..., -1])
    top = picture.max_value
    expected = new_rgb[mask].astype(np.float64) * top
    if mode in ("L", "LA"):
        expected = expected @ np.array([0.299, 0.587, 0.114])[:, None]
    got = result.pixels[mask][:, :expected.shape[1]].astype(np.float64)
    assert np.abs(got - expected).max() <= 0.5 + 1e-6
    # writing a picture's own colour back changes nothing
    np.testing.assert_array_equal(picture.replace_foreground(picture.rgb(), mask).pixels, picture.pixels)


def test_grey_foreground_matches_pil_luma():
    rgb8 = np.random.default_rng(8).integers(0, 256, (H, W, 3), dtype=np.uint8)
    grey = random_picture("L", np.uint8).replace_foreground(rgb8 / 255.0, np.ones((H, W), bool))
    pil = np.asarray(Image.fromarray(rgb8).convert("L")).astype(int)
    assert np.abs(grey.pixels[..., 0].astype(int) - pil).max() <= 1


def test_replace_foreground_refuses_nan_and_wrong_shapes():
    picture = random_picture("RGB", np.uint8, size=(10, 12))
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:7] = True
    bad = np.zeros((10, 12, 3))
    bad[3, 4] = np.nan
    with pytest.raises(ZsharmError) as error:
        picture.replace_foreground(bad, mask)
    assert_one_line(error, "NaN")
    with pytest.raises(ZsharmError):
        picture.replace_foreground(np.zeros((10, 11, 3)), mask)
    with pytest.raises(ZsharmError):
        picture.replace_foreground(np.zeros((10, 12, 3)), mask[:, :5])


def test_rgb_and_pil_views(tmp_path):
    for mode in ("L", "LA", "RGB", "RGBA"):
        picture = random_picture(mode, np.uint8, seed=9, size=(13, 21))
        path = save_picture(picture, tmp_path / f"{mode}.png")
        np.testing.assert_array_equal(np.asarray(load_image(path).to_pil_rgb8()),
                                      np.asarray(Image.open(path).convert("RGB")), err_msg=mode)
        rgb = picture.rgb()
        assert rgb.dtype == np.float32 and rgb.shape == (13, 21, 3)
        np.testing.assert_allclose(rgb * 255, np.asarray(picture.to_pil_rgb8()), atol=1e-3)
    deep = random_picture("RGBA", np.uint16, seed=10, size=(13, 21))
    expected = np.round(deep.pixels[..., :3] / 257.0)
    np.testing.assert_array_equal(np.asarray(deep.to_pil_rgb8()), expected)


# ---------------------------------------------------------------- masks


def test_mask_threshold_is_100_of_255_at_any_depth(tmp_path):
    values8 = np.array([[0, 100, 101, 255]], np.uint8)
    Image.fromarray(values8).save(tmp_path / "m8.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m8.png")[0], [False, False, True, True])
    values16 = np.array([[0, 25700, 25701, 65535]], np.uint16)
    Image.fromarray(values16).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m16.png")[0], [False, False, True, True])
    rgb = np.zeros((1, 4, 3), np.uint8)
    rgb[0, :, 1] = values8[0]  # painted green: the brightest channel counts, not the first
    np.testing.assert_array_equal(load_mask(rgb)[0], [False, False, True, True])
    labels = np.array([[0, 1, 1, 0]], np.uint8)  # a 0/1 label map
    Image.fromarray(labels).save(tmp_path / "labels.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "labels.png")[0], [False, True, True, False])
    Image.fromarray(np.array([[0, 1, 1, 0]], bool)).save(tmp_path / "bits.png")  # mode "1"
    np.testing.assert_array_equal(load_mask(tmp_path / "bits.png")[0], [False, True, True, False])


def test_mask_uses_alpha_when_alpha_carries_it(tmp_path):
    cutout = np.zeros((6, 8, 4), np.uint8)
    cutout[..., :3] = 255  # colour says "all foreground"
    cutout[2:4, 3:6, 3] = 255  # opacity says where the object is
    Image.fromarray(cutout, "RGBA").save(tmp_path / "cut.png")
    mask = load_mask(tmp_path / "cut.png", size=(8, 6))
    assert mask.sum() == 6 and mask[2:4, 3:6].all()
    opaque = np.zeros((6, 8, 4), np.uint8)
    opaque[..., 3] = 255  # constant alpha: the first channel decides
    opaque[1:3, 1:3, 0] = 200
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    assert load_mask(tmp_path / "opaque.png").sum() == 4


def test_mask_errors_are_one_line_and_name_the_file(tmp_path):
    Image.fromarray(blob_mask().astype(np.uint8) * 255).save(tmp_path / "m.png")
    with pytest.raises(ZsharmError) as error:
        load_mask(tmp_path / "m.png", size=(W + 1, H))
    assert_one_line(error, "m.png", f"{W}x{H}", f"{W + 1}x{H}")
    Image.fromarray(np.full((5, 5), 100, np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ZsharmError) as error:
        load_mask(tmp_path / "empty.png")
    assert_one_line(error, "empty.png", "no foreground")
    Image.fromarray(np.full((5, 5), 101, np.uint8)).save(tmp_path / "full.png")
    with pytest.raises(ZsharmError) as error:
        load_mask(tmp_path / "full.png")
    assert_one_line(error, "full.png", "no background")
    (tmp_path / "notes.txt").write_text("not a mask")
    with pytest.raises(ZsharmError) as error:
        load_mask(tmp_path / "notes.txt")
    assert_one_line(error, "notes.txt")


# ---------------------------------------------------------------- errors


def test_unreadable_images_give_one_line(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello\nworld\n")
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(11).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    (tmp_path / "folder.png").mkdir()
    for name, words in [("missing.png", ["no such file"]), ("empty.png", ["empty"]), ("text.jpg", []),
                        ("cut.png", []), ("folder.png", ["folder"])]:
        with pytest.raises(ZsharmError) as error:
            load_image(tmp_path / name)
        assert_one_line(error, name, *words)


@pytest.mark.parametrize("array,words", [
    (np.array([[0.1, np.nan]]), ["NaN"]),
    (np.array([[0.5, np.inf]]), ["NaN"]),
    (np.array([[0.5, 1.5]]), ["[0, 1]"]),
    (np.zeros((4, 4, 5)), ["C in 1..4"]),
    (np.zeros((0, 4, 3)), ["empty"]),
    (np.array([[-1, 3]]), ["0..65535"]),
])
def test_bad_arrays_give_one_line(array, words):
    with pytest.raises(ZsharmError) as error:
        load_image(array)
    assert_one_line(error, *words)
    with pytest.raises(ZsharmError):
        load_mask(array)


def test_save_refuses_what_the_format_cannot_hold(tmp_path):
    rgba = random_picture("RGBA", np.uint8, size=(8, 9))
    deep = random_picture("RGB", np.uint16, size=(8, 9))
    for picture, name, words in [(rgba, "a.jpg", ["alpha", ".png"]), (rgba, "a.bmp", ["alpha"]),
                                 (deep, "a.jpg", ["16-bit"]), (deep, "a.webp", ["16-bit"]),
                                 (rgba, "a.gif", ["extension"])]:
        with pytest.raises(ZsharmError) as error:
            save_picture(picture, tmp_path / name)
        assert_one_line(error, name, *words)
    assert list(tmp_path.iterdir()) == []
    converted = load_image(save_picture(rgba, tmp_path / "a.jpg", convert=True, lossy=True, quality=100))
    assert converted.mode == "RGB" and np.abs(converted.rgb() - rgba.rgb()).mean() < 0.05
    reduced = load_image(save_picture(deep, tmp_path / "a.webp", convert=True))
    np.testing.assert_array_equal(reduced.pixels, np.round(deep.pixels / 257.0))


@pytest.mark.parametrize("mode,dtype", [("RGB", np.uint8), ("RGB", np.uint16), ("L", np.uint16)])
def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch, mode, dtype):
    target = tmp_path / "out.png"
    target.write_bytes(b"the previous result")
    real_encode = io_saving._encode

    def encode_then_fail(file, *args):
        real_encode(file, *args)  # the temp file now holds a whole image
        raise OSError("disk full")

    monkeypatch.setattr(io_saving, "_encode", encode_then_fail)
    with pytest.raises(ZsharmError) as error:
        save_picture(random_picture(mode, dtype, size=(8, 9)), target)
    assert_one_line(error, "out.png", "disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    assert target.read_bytes() == b"the previous result"


def test_ctrl_c_during_a_save_leaves_nothing_behind(tmp_path, monkeypatch):
    def interrupted(file, *args):
        file.write(b"half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(io_saving, "_encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_picture(random_picture("RGB", np.uint8, size=(8, 9)), tmp_path / "out.png")
    with pytest.raises(KeyboardInterrupt), io_files.atomic_path(tmp_path / "table.md") as temp:
        temp.write_text("half a table")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_of_killed_processes_are_swept_on_the_next_write(tmp_path):
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.{dead.pid}-0123abcd.tmp.png"
    live = tmp_path / f".out.{os.getpid()}-0123abcd.tmp.png"  # this process: perhaps still writing it
    stale.write_bytes(b"left by a SIGKILL")
    live.write_bytes(b"being written")
    save_picture(random_picture("RGB", np.uint8, size=(4, 4)), tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "out.png"])


def test_failed_opencv_encoding_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(io_saving.cv2, "imencode", lambda *args, **kwargs: (False, None))
    with pytest.raises(ZsharmError) as error:
        save_picture(random_picture("RGBA", np.uint16, size=(8, 9)), tmp_path / "out.png")
    assert_one_line(error, "out.png")
    assert list(tmp_path.iterdir()) == []


def test_save_into_unusable_folder_gives_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ZsharmError) as error:
        save_picture(random_picture("RGB", np.uint8, size=(4, 4)), tmp_path / "file" / "out.png")
    assert_one_line(error, "out.png")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


# ---------------------------------------------------------------- work size


def test_work_size_keeps_aspect_on_the_grid():
    assert work_size((4000, 3000)) == (512, 384)
    assert work_size((3000, 4000)) == (384, 512)
    assert work_size((512, 512)) == (512, 512)
    assert work_size((W, H), long_side=256) == (192, 256)
    assert work_size((10000, 50)) == (512, 64)
    rng = np.random.default_rng(12)
    for width, height in rng.integers(16, 6000, (200, 2)):
        w, h = work_size((width, height))
        assert w % 64 == 0 and h % 64 == 0 and max(w, h) == 512 and min(w, h) >= 64
        short_exact = min(width, height) * 512 / max(width, height)
        assert abs(min(w, h) - max(64, short_exact)) <= 32
    with pytest.raises(ZsharmError):
        work_size((0, 10))
