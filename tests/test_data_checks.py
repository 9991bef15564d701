"""Build-time checks of every dataset file (issue 7, items 2, 7, 10): bad files stop a run before iteration 1.

Each dataset is built the way the trainer builds it (``build_dataset`` / the registry), with files that a user
could really have: a truncated PNG (interrupted copy), an RGBA or greyscale file among RGB ones, a file whose
header cannot be parsed, 16-bit PNGs.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ddr_restore.data import build_dataset
from ddr_restore.data.paired import PairedImageDataset
from ddr_restore.errors import InputError, MissingPathError
from ddr_restore.imageio import write_image


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _pairs(root: Path, n: int = 3, h: int = 40, w: int = 48) -> tuple:
    lq_dir, gt_dir = root / "input", root / "target"
    for i in range(n):
        write_image(lq_dir / f"{i:03d}.png", _rgb(h, w, i))
        write_image(gt_dir / f"{i:03d}.png", _rgb(h, w, 100 + i))
    return lq_dir, gt_dir


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _opt(lq_dir: Path, gt_dir: Path, **extra) -> dict:
    return {"type": "PairedImageDataset", "name": "mini", "dataroot_lq": str(lq_dir), "dataroot_gt": str(gt_dir),
            **extra}


def _write_bgra(path: Path, rgba: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))


# ------------------------------------------------------------------ regressions
def test_truncated_png_in_validation_set_is_reported_when_built(tmp_path):
    lq_dir, gt_dir = _pairs(tmp_path)
    _truncate(gt_dir / "001.png")
    with pytest.raises(InputError) as info:
        build_dataset(_opt(lq_dir, gt_dir), "val")
    message = str(info.value)
    assert message.startswith("datasets.val: dataset 'mini': 1 of 6 image files cannot be used (1 truncated)")
    assert f"{gt_dir / '001.png'}: truncated" in message
    assert "IEND" in message


def test_all_bad_files_are_reported_in_one_message(tmp_path):
    lq_dir, gt_dir = _pairs(tmp_path, n=5)
    _truncate(lq_dir / "000.png")
    _write_bgra(gt_dir / "001.png", np.dstack([_rgb(40, 48, 1), np.full((40, 48), 255, np.uint8)]))
    write_image(lq_dir / "002.png", _rgb(40, 48, 2)[..., 0])
    (gt_dir / "003.png").write_bytes(b"\x00" * 100)
    with pytest.raises(InputError) as info:
        build_dataset(_opt(lq_dir, gt_dir, gt_size=16), "train")
    message = str(info.value)
    assert "4 of 10 image files cannot be used" in message
    for name, problem in (("input/000.png", "truncated"), ("target/001.png", "image with an alpha channel (RGBA"),
                          ("input/002.png", "greyscale"), ("target/003.png", "not a readable image")):
        assert f"{tmp_path / name}: {problem}" in message
    assert "alpha: drop in the dataset options" in message and "gray: replicate in the dataset options" in message


def test_many_bad_files_are_counted_and_a_few_named(tmp_path):
    lq_dir, gt_dir = _pairs(tmp_path, n=8)
    for i in range(8):
        _truncate(gt_dir / f"{i:03d}.png")
    with pytest.raises(InputError, match=r"8 of 16 image files cannot be used \(8 truncated\).*\.\.\. \(3 more\)"):
        PairedImageDataset(lq_dir, gt_dir, phase="val")


def test_rgba_file_in_training_set_needs_alpha_drop(tmp_path):
    lq_dir, gt_dir = _pairs(tmp_path, n=2)
    rgb = _rgb(40, 48, 7)
    rgba = np.dstack([rgb, np.arange(40 * 48, dtype=np.uint32).reshape(40, 48).astype(np.uint8)])
    _write_bgra(lq_dir / "001.png", rgba)
    with pytest.raises(InputError) as info:
        build_dataset(_opt(lq_dir, gt_dir, gt_size=16), "train")
    message = str(info.value)
    assert str(lq_dir / "001.png") in message and "RGBA" in message
    assert "use alpha: drop in the dataset options" in message
    ds = build_dataset(_opt(lq_dir, gt_dir, gt_size=40, alpha="drop"), "val")  # centre crop = the whole height
    item = ds[1]
    got = (item["lq"].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(got, rgb[:, 4:44])  # colour kept as is, alpha ignored (not composited)


def test_grey_file_in_training_set_needs_gray_replicate(tmp_path):
    lq_dir, gt_dir = _pairs(tmp_path, n=2)
    grey = _rgb(40, 48, 3)[..., 0]
    write_image(gt_dir / "000.png", grey)
    with pytest.raises(InputError, match=r"target[/\\]000\.png: greyscale.*use gray: replicate in the dataset"):
        build_dataset(_opt(lq_dir, gt_dir, gt_size=16), "train")
    ds = build_dataset(_opt(lq_dir, gt_dir, gt_size=16, gray="replicate"), "val")
    gt = (ds[0]["gt"].numpy() * 255).round().astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(gt[c], grey[12:28, 16:32])


def test_unparseable_header_is_an_error_not_skipped(tmp_path):
    lq_dir, gt_dir = _pairs(tmp_path, n=2)
    data = bytearray((lq_dir / "001.png").read_bytes())
    data[12:16] = b"XXXX"  # the IHDR chunk type: PIL and the decoder both give up
    (lq_dir / "001.png").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"input[/\\]001\.png: damaged PNG header"):
        PairedImageDataset(lq_dir, gt_dir, phase="val")
    (lq_dir / "001.png").write_bytes(b"GIF89a" + b"\x00" * 50)  # unknown content behind a .png name
    with pytest.raises(InputError, match=r"input[/\\]001\.png: not a readable image"):
        PairedImageDataset(lq_dir, gt_dir, phase="val")


def test_16bit_png_pair_loads_at_full_precision(tmp_path):
    rng = np.random.default_rng(0)
    lq16 = rng.integers(0, 65536, (24, 32, 3), dtype=np.uint16)
    gt16 = rng.integers(0, 65536, (24, 32, 3), dtype=np.uint16)
    for folder, arr in (("input", lq16), ("target", gt16)):
        (tmp_path / folder).mkdir()
        assert cv2.imwrite(str(tmp_path / folder / "a.png"), arr[..., ::-1])  # OpenCV writes BGR
    ds = PairedImageDataset(tmp_path / "input", tmp_path / "target", phase="val")
    assert [h.bit_depth for h in ds.headers.values()] == [16, 16]
    item = ds[0]
    np.testing.assert_allclose(item["lq"].numpy().transpose(1, 2, 0), lq16 / 65535.0, rtol=0, atol=1e-7)
    np.testing.assert_allclose(item["gt"].numpy().transpose(1, 2, 0), gt16 / 65535.0, rtol=0, atol=1e-7)
    assert "16-bit RGB PNG" in ds.file_summary()


# ------------------------------------------------------------------ options and error classes
def test_policy_options_are_validated(tmp_path):
    lq_dir, gt_dir = _pairs(tmp_path, n=1)
    with pytest.raises(InputError, match=r"gray must be one of error, replicate; got 'yes'"):
        build_dataset(_opt(lq_dir, gt_dir, gray="yes"), "val")
    with pytest.raises(InputError, match=r"alpha must be one of error, drop"):
        build_dataset(_opt(lq_dir, gt_dir, alpha=True), "val")
    with pytest.raises(InputError, match="check_files"):
        build_dataset(_opt(lq_dir, gt_dir, check_files="fast"), "val")
    assert PairedImageDataset(lq_dir, gt_dir, phase="val", check_sizes=False).check_files == "off"  # older spelling


def test_check_files_off_defers_to_loading_and_decode_finds_damaged_pixels(tmp_path):
    lq_dir, gt_dir = _pairs(tmp_path, n=2, h=64, w=64)
    path = gt_dir / "001.png"
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    for k in range(idat + 40, idat + 60):  # damage compressed pixel data: the header check cannot see it
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    PairedImageDataset(lq_dir, gt_dir, phase="val")  # headers are fine
    with pytest.raises(InputError, match=r"target[/\\]001\.png: the pixel data .* cannot be decoded"):
        PairedImageDataset(lq_dir, gt_dir, phase="val", check_files="decode")
    _truncate(path)
    ds = PairedImageDataset(lq_dir, gt_dir, phase="val", check_files=False)
    with pytest.raises(InputError, match=r"cannot decode image file .*target[/\\]001\.png: truncated"):
        ds[1]


def test_data_errors_are_user_errors(tmp_path):
    lq_dir, gt_dir = _pairs(tmp_path, n=2)
    with pytest.raises(MissingPathError, match="dataroot_gt folder not found"):
        build_dataset(_opt(lq_dir, tmp_path / "nowhere"), "val")
    write_image(lq_dir / "orphan.png", _rgb(40, 48, 9))
    with pytest.raises(MissingPathError, match=r"datasets\.val: 1 lq image\(s\) .* orphan\.png"):
        build_dataset(_opt(lq_dir, gt_dir), "val")
    (lq_dir / "orphan.png").unlink()
    lst = tmp_path / "list.txt"
    lst.write_text("000.png 000.png extra\n")
    with pytest.raises(InputError, match=r"list\.txt, line 1"):
        build_dataset(_opt(lq_dir, gt_dir, meta_info_file=str(lst)), "val")
    write_image(gt_dir / "001.png", _rgb(40, 50, 1))
    with pytest.raises(InputError, match="size mismatch"):
        build_dataset(_opt(lq_dir, gt_dir), "val")


def test_synthetic_dataset_checks_all_its_files_first(tmp_path):
    write_image(tmp_path / "a.png", _rgb(40, 40, 0))
    write_image(tmp_path / "b.png", _rgb(40, 40, 1))
    _truncate(tmp_path / "a.png")
    _write_bgra(tmp_path / "c.png", np.dstack([_rgb(40, 40, 2), np.zeros((40, 40), np.uint8)]))
    with pytest.raises(InputError) as info:
        build_dataset({"type": "SyntheticMotionBlurDataset", "dataroot_gt": str(tmp_path)}, "val")
    message = str(info.value)
    assert "2 of 3 image files" in message and "a.png: truncated" in message and "c.png: image with an alpha" in message


def test_gopro_mini_headers_match_decoding(shared_data):
    root = shared_data / "gopro_mini" / "train"
    ds = PairedImageDataset(root / "input", root / "target", phase="val")
    assert len(ds.headers) == 22
    assert ds.file_summary() == "22 files: 22 8-bit RGB PNG; 1280x720"
    img = cv2.imread(str(ds.pairs[0][0]), cv2.IMREAD_UNCHANGED)
    header = ds.headers[ds.pairs[0][0]]
    assert (header.height, header.width, header.channels) == img.shape and img.dtype == np.uint8


def test_training_stops_before_iteration_1_on_a_bad_validation_file(tmp_path):
    """Issue 7 item 2: a truncated validation PNG used to surface at the first validation, with no checkpoint."""
    from ddr_restore.train.trainer import train

    train_lq, train_gt = _pairs(tmp_path / "train", n=2, h=32, w=32)
    val_lq, val_gt = _pairs(tmp_path / "val", n=2, h=32, w=32)
    _truncate(val_lq / "001.png")
    opt = {
        "name": "badval", "num_gpu": 0, "manual_seed": 1,
        "datasets": {
            "train": {"type": "PairedImageDataset", "dataroot_lq": str(train_lq), "dataroot_gt": str(train_gt),
                      "gt_size": 16, "batch_size_per_gpu": 1, "num_worker_per_gpu": 0},
            "val": {"type": "PairedImageDataset", "name": "val", "dataroot_lq": str(val_lq),
                    "dataroot_gt": str(val_gt)},
        },
        "network_g": {"type": "NAFNet", "width": 4, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]},
        "path": {"experiments_root": str(tmp_path / "experiments")},
        "train": {"optim_g": {"type": "AdamW", "lr": 1e-3}, "total_iter": 2,
                  "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0}},
        "val": {"val_freq": 1, "metrics": {"psnr": {"type": "calculate_psnr"}}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 1, "use_tb_logger": False},
    }
    with pytest.raises(InputError, match=r"input[/\\]001\.png: truncated"):
        train(opt)
    assert not (tmp_path / "experiments" / "badval" / "models").exists()  # refused before anything was written
