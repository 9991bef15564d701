"""imageio: one gray/alpha/bit-depth policy for reading and for header checks, and cheap truncation detection.

The header check must predict exactly what the decoder (OpenCV) yields, so every case below is compared with an
independent ``cv2.imdecode`` of the same file rather than with hard-coded expectations.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from ddr_restore.errors import InputError, MissingPathError
from ddr_restore.imageio import (
    CLI_HINT,
    DATASET_HINT,
    check_image_files,
    check_image_header,
    img2tensor,
    read_image,
    read_image_header,
    read_image_native,
    scan_image_files,
    to_float32,
)

RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
ALPHA8 = RNG.integers(0, 256, (20, 30), dtype=np.uint8)


def _pil(path: Path, image: Image.Image, **kw) -> None:
    image.save(path, **kw)


def _cv(path: Path, arr: np.ndarray) -> None:
    assert cv2.imwrite(str(path), arr)


def _u16(*shape: int) -> np.ndarray:
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


# name -> writer; covers every layout the decoders treat differently (palette + tRNS gains alpha, grey + tRNS not)
CASES = {
    "rgb8.png": lambda p: _pil(p, Image.fromarray(RGB8)),
    "rgba8.png": lambda p: _pil(p, Image.fromarray(np.dstack([RGB8, ALPHA8]))),
    "grey8.png": lambda p: _pil(p, Image.fromarray(ALPHA8)),
    "greyalpha.png": lambda p: _pil(p, Image.merge("LA", [Image.fromarray(ALPHA8)] * 2)),
    "palette.png": lambda p: _pil(p, Image.fromarray(RGB8).convert("P")),
    "palette_trns.png": lambda p: _pil(p, Image.fromarray(RGB8).convert("P"), transparency=3),
    "rgb_trns.png": lambda p: _pil(p, Image.fromarray(RGB8), transparency=(1, 2, 3)),
    "grey_trns.png": lambda p: _pil(p, Image.fromarray(ALPHA8), transparency=7),
    "bilevel.png": lambda p: _pil(p, Image.fromarray(ALPHA8 > 128)),
    "grey16.png": lambda p: _cv(p, _u16(20, 30)),
    "rgb16.png": lambda p: _cv(p, _u16(20, 30, 3)),
    "rgba16.png": lambda p: _cv(p, _u16(20, 30, 4)),
    "rgb.jpg": lambda p: _pil(p, Image.fromarray(RGB8)),
    "grey.jpg": lambda p: _pil(p, Image.fromarray(ALPHA8)),
    "rgb.bmp": lambda p: _pil(p, Image.fromarray(RGB8)),
    "grey.bmp": lambda p: _pil(p, Image.fromarray(ALPHA8)),
    "palette.bmp": lambda p: _pil(p, Image.fromarray(RGB8).convert("P")),
    "rgb.tif": lambda p: _pil(p, Image.fromarray(RGB8)),
    "rgba.tif": lambda p: _pil(p, Image.fromarray(np.dstack([RGB8, ALPHA8]))),
    "rgb16.tif": lambda p: _cv(p, _u16(20, 30, 3)),
    "grey16.tif": lambda p: _cv(p, _u16(20, 30)),
    "rgb.webp": lambda p: _pil(p, Image.fromarray(RGB8), lossless=True),
    "rgba.webp": lambda p: _pil(p, Image.fromarray(np.dstack([RGB8, ALPHA8])), lossless=True),
    "rgb.ppm": lambda p: _pil(p, Image.fromarray(RGB8)),
    "grey.pgm": lambda p: _pil(p, Image.fromarray(ALPHA8)),
    "grey16.pgm": lambda p: _cv(p, _u16(20, 30)),
    "rgb16.ppm": lambda p: _cv(p, _u16(20, 30, 3)),
}


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("formats")
    paths = {}
    for name, write in CASES.items():
        write(folder / name)
        paths[name] = folder / name
    return paths


def _decoded(path: Path) -> np.ndarray:
    img = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None
    return img


@pytest.mark.parametrize("name", sorted(CASES))
def test_header_predicts_what_the_decoder_yields(sample_files, name):
    path = sample_files[name]
    header = read_image_header(path)
    img = _decoded(path)
    channels = 1 if img.ndim == 2 else img.shape[2]
    assert (header.height, header.width) == img.shape[:2]
    assert header.channels == channels
    assert header.bit_depth == 8 * img.dtype.itemsize
    # and the policy agrees with read_image: both accept or both refuse, for every switch setting
    for gray in ("error", "replicate"):
        for alpha in ("error", "drop"):
            try:
                read_image(path, gray=gray, alpha=alpha)
                read_ok = True
            except InputError:
                read_ok = False
            try:
                check_image_header(path, gray=gray, alpha=alpha)
                header_ok = True
            except InputError:
                header_ok = False
            assert read_ok == header_ok, (gray, alpha)


@pytest.mark.parametrize("name", sorted(CASES))
def test_truncated_files_are_found_from_the_header_check(sample_files, name, tmp_path):
    data = sample_files[name].read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(InputError, match=r"truncated|damaged"):
        check_image_header(cut, gray="replicate", alpha="drop")
    with pytest.raises(InputError, match=str(cut).replace("\\", "\\\\")):
        read_image(cut, gray="replicate", alpha="drop")  # the decoder refuses it too


def test_png_with_bytes_after_iend_is_accepted(sample_files, tmp_path):
    padded = tmp_path / "padded.png"
    padded.write_bytes(sample_files["rgb8.png"].read_bytes() + b"\x00" * 300)
    assert check_image_header(padded).size == (30, 20)
    np.testing.assert_array_equal((read_image(padded) * 255).round().astype(np.uint8), RGB8)


def test_16bit_values_are_kept(sample_files):
    path = sample_files["rgb16.png"]
    img = read_image(path)
    expected = _decoded(path)[..., ::-1] / 65535.0
    np.testing.assert_allclose(img, expected, rtol=0, atol=1e-7)
    assert len(np.unique((img * 65535).round().astype(np.int64) % 257)) > 1  # not reduced to 8-bit steps


def test_refusals_name_the_switches_of_each_context(sample_files):
    rgba, grey = sample_files["rgba8.png"], sample_files["grey8.png"]
    with pytest.raises(InputError) as info:
        read_image(rgba)
    generic = str(info.value)
    assert str(rgba) in generic
    assert "alpha: drop in the dataset options" in generic and "--alpha drop on ddr-score/ddr-eval" in generic
    with pytest.raises(InputError, match=r"to ignore alpha channels, use --alpha drop$"):
        read_image(rgba, hint=CLI_HINT)
    with pytest.raises(InputError, match=r"greyscale.*use gray: replicate in the dataset options$"):
        read_image(grey, hint=DATASET_HINT)
    with pytest.raises(InputError, match=r"grey8\.png: greyscale.*--gray replicate$"):
        check_image_header(grey, hint=CLI_HINT)
    with pytest.raises(InputError, match="gray must be one of"):
        read_image(grey, gray="yes")


def test_float_tiff_is_refused_by_both_paths(tmp_path):
    path = tmp_path / "float.tif"
    assert cv2.imwrite(str(path), RNG.random((8, 8, 3)).astype(np.float32))
    with pytest.raises(InputError, match="float"):
        check_image_header(path)
    with pytest.raises(InputError, match="8- or 16-bit"):
        read_image(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(MissingPathError, match="nothing.png"):
        read_image(tmp_path / "nothing.png")
    with pytest.raises(MissingPathError, match="nothing.png"):
        check_image_header(tmp_path / "nothing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png: empty file"):
        check_image_header(tmp_path / "empty.png")
    with pytest.raises(InputError, match=r"empty\.png"):
        read_image(tmp_path / "empty.png")


def test_batch_check_collects_every_problem(sample_files, tmp_path):
    good = [sample_files["rgb8.png"], sample_files["rgb16.png"], sample_files["rgb.jpg"]]
    bad = [sample_files["rgba8.png"], sample_files["grey16.png"], tmp_path / "gone.png"]
    headers, problems = scan_image_files(good + bad + good)  # duplicates are read once
    assert sorted(headers) == sorted(good)
    assert [(p.path, p.kind) for p in problems] == [(bad[0], "alpha"), (bad[1], "gray"), (bad[2], "missing")]
    with pytest.raises(InputError) as info:
        check_image_files(good + bad, hint=CLI_HINT, what="input images")
    message = str(info.value)
    assert message.startswith("3 of 6 input images cannot be used (1 with alpha, 1 greyscale, 1 missing): ")
    assert all(str(p) in message for p in bad)
    assert message.endswith("use --gray replicate; to ignore alpha channels, use --alpha drop")
    with pytest.raises(MissingPathError):
        check_image_files(good + [tmp_path / "gone.png"])
    assert check_image_files(good + bad[:2], gray="replicate", alpha="drop")[bad[1]].bit_depth == 16


# ---------------------------------------------------------------------------------------------- native reading
def _float_first(path: Path) -> np.ndarray:
    """The reading before read_image_native existed: the whole decoded image to float32, then to RGB."""
    img = _decoded(path)
    img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 65535.0)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("name", sorted(CASES))
def test_read_image_and_native_view_give_the_float_first_values(sample_files, name):
    path = sample_files[name]
    decoded = _decoded(path)
    if decoded.dtype not in (np.uint8, np.uint16):
        pytest.skip(f"{name} decodes to {decoded.dtype}")
    expected = _float_first(path)
    img = read_image(path, gray="replicate", alpha="drop")
    assert img.dtype == np.float32 and img.flags.c_contiguous
    np.testing.assert_array_equal(img, expected)  # bit-identical, not merely close

    native = read_image_native(path, gray="replicate", alpha="drop")
    assert native.dtype == decoded.dtype and native.shape == expected.shape
    assert not native.flags.owndata  # a view of the decoded buffer: no whole-image copy
    np.testing.assert_array_equal(to_float32(native), expected)
    np.testing.assert_array_equal(img2tensor(native).numpy(), expected.transpose(2, 0, 1))
    # a flipped, transposed crop (what the training loader converts) keeps the values too
    crop = native[2:15, 3:20][::-1, ::-1].swapaxes(0, 1)
    ref_crop = expected[2:15, 3:20][::-1, ::-1].swapaxes(0, 1)
    np.testing.assert_array_equal(img2tensor(crop).numpy(), np.ascontiguousarray(ref_crop.transpose(2, 0, 1)))


def test_native_reading_applies_the_same_policy(sample_files):
    with pytest.raises(InputError, match=r"rgba8\.png has 4 channels.*alpha: drop in the dataset options$"):
        read_image_native(sample_files["rgba8.png"], hint=DATASET_HINT)
    with pytest.raises(InputError, match=r"grey16\.png is a greyscale.*--gray replicate$"):
        read_image_native(sample_files["grey16.png"], hint=CLI_HINT)
    with pytest.raises(MissingPathError, match="gone.png"):
        read_image_native(sample_files["rgb8.png"].parent / "gone.png")
    grey = read_image_native(sample_files["grey8.png"], gray="replicate")
    assert grey.shape == (20, 30, 3) and not grey.flags.writeable  # a broadcast view, never written through


@pytest.mark.parametrize("dtype, div", [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_integer_to_float_is_bit_identical_for_every_value(dtype, div):
    values = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
    hwc = np.stack([values, values[::-1], np.roll(values, 7)], axis=1).reshape(-1, 16, 3)
    expected = hwc.astype(np.float32) / div  # the float-first conversion
    view = hwc[:, ::-1][::-1].swapaxes(0, 1)  # negative and swapped strides
    ref_view = expected[:, ::-1][::-1].swapaxes(0, 1)
    out = to_float32(view)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, ref_view)
    tensor = img2tensor(view)
    assert tensor.dtype == torch.float32 and tensor.is_contiguous()
    np.testing.assert_array_equal(tensor.numpy(), ref_view.transpose(2, 0, 1))
    assert tensor.max().item() == 1.0 and tensor.min().item() == 0.0


def test_img2tensor_of_float_arrays_is_unchanged():
    arr = RNG.random((5, 7, 3))
    t = img2tensor(arr)
    assert t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), arr.transpose(2, 0, 1).astype(np.float32))
