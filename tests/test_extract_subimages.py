"""scripts/extract_subimages.py: tiling rule, names, paired/SR alignment, errors naming files, no overwriting.

Test images encode their own coordinates (channel 0 = row, channel 1 = column), so every tile says where it was cut
from: a tile taken at the wrong place, or a partner tile cut at another offset, shows up as wrong pixel values.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "extract_subimages.py"


def _load_script():
    # Registered under its own name so that worker processes (fork) can unpickle its functions.
    if "extract_subimages" in sys.modules:
        return sys.modules["extract_subimages"]
    spec = importlib.util.spec_from_file_location("extract_subimages", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["extract_subimages"] = module
    spec.loader.exec_module(module)
    return module


es = _load_script()
PROG = "extract_subimages.py"


# ---------------------------------------------------------------------------------------------- helpers
def coord_image(h: int, w: int, third: int | np.ndarray = 0, dtype=np.uint8) -> np.ndarray:
    """HxWx3 image with channel 0 = row index, channel 1 = column index (h, w <= 256 for uint8)."""
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    img = np.zeros((h, w, 3), dtype)
    img[..., 0], img[..., 1], img[..., 2] = yy, xx, third
    return img


def write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def run(argv, capsys=None):
    """Run the script's main; returns (exit code, stdout, stderr)."""
    try:
        code = es.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: error: "), lines
    return lines[0]


def tiles_of(folder: Path, stem: str):
    return sorted(folder.glob(f"{stem}_s*.png"))


# ---------------------------------------------------------------------------------------------- tiling rule
def test_tile_starts_rule_by_hand():
    # length 50, crop 32, step 16: starts 0, 16 fit (16 + 32 = 48); 2 pixels remain.
    assert es.tile_starts(50, 32, 16, thresh=0) == [0, 16, 18]
    assert es.tile_starts(50, 32, 16, thresh=1) == [0, 16, 18]   # 2 > 1: border tile added
    assert es.tile_starts(50, 32, 16, thresh=2) == [0, 16]       # BasicSR: remainder == thresh is dropped
    assert es.tile_starts(50, 32, 16, thresh=5) == [0, 16]
    assert es.tile_starts(48, 32, 16) == [0, 16]                 # exact fit: no extra tile
    assert es.tile_starts(32, 32, 16) == [0]
    assert es.tile_starts(31, 32, 16) == []                      # too short: no tile
    # GoPro frame, the NAFNet recipe: rows 0, 208; columns 0, 256, 512, 768 (8 tiles).
    assert es.tile_starts(720, 512, 256) == [0, 208]
    assert es.tile_starts(1280, 512, 256) == [0, 256, 512, 768]
    assert es.tile_boxes(720, 1280, 512, 256) == [(0, 0), (0, 256), (0, 512), (0, 768),
                                                 (208, 0), (208, 256), (208, 512), (208, 768)]


def test_tiles_cover_every_pixel_names_and_row_major_order(tmp_path, capsys):
    rng = np.random.default_rng(0)
    img = coord_image(50, 70, third=rng.integers(0, 256, (50, 70)))
    write(tmp_path / "in" / "pic.png", img)
    code, out, _ = run(["--input", tmp_path / "in", "--output", tmp_path / "out",
                        "--crop-size", 32, "--step", 16, "--workers", 1], capsys)
    assert code == 0
    tiles = tiles_of(tmp_path / "out", "pic")
    # rows 0, 16, 18 (50 = 48 + 2); columns 0, 16, 32, 38 (70 = 64 + 6) -> 12 tiles, row-major
    expected = [(y, x) for y in (0, 16, 18) for x in (0, 16, 32, 38)]
    assert [t.name for t in tiles] == [f"pic_s{i:03d}.png" for i in range(1, 13)]
    assert "12 tiles" in out
    canvas = np.zeros_like(img)
    covered = np.zeros(img.shape[:2], bool)
    for tile_path, (y, x) in zip(tiles, expected):
        tile = read(tile_path)
        assert tile.shape == (32, 32, 3) and tile.dtype == np.uint8
        assert (int(tile[0, 0, 0]), int(tile[0, 0, 1])) == (y, x), tile_path.name
        canvas[y : y + 32, x : x + 32] = tile
        covered[y : y + 32, x : x + 32] = True
    assert covered.all()
    np.testing.assert_array_equal(canvas, img)


def test_thresh_size_leaves_a_small_remainder_uncut(tmp_path, capsys):
    write(tmp_path / "in" / "pic.png", coord_image(50, 70))
    code, _, _ = run(["--input", tmp_path / "in", "--output", tmp_path / "out",
                      "--crop-size", 32, "--step", 16, "--thresh-size", 2, "--workers", 1], capsys)
    assert code == 0
    covered = np.zeros((50, 70), bool)
    tiles = tiles_of(tmp_path / "out", "pic")
    assert len(tiles) == 8  # rows 0, 16 (remainder 2 <= 2 dropped); columns 0, 16, 32, 38 (6 > 2 kept)
    for t in tiles:
        tile = read(t)
        y, x = int(tile[0, 0, 0]), int(tile[0, 0, 1])
        covered[y : y + 32, x : x + 32] = True
    assert covered[:48].all() and not covered[48:].any()


def test_sixteen_bit_and_greyscale_are_kept(tmp_path, capsys):
    deep = (np.arange(40 * 40 * 3, dtype=np.uint16).reshape(40, 40, 3) % 4096) * 16
    write(tmp_path / "in" / "deep.png", deep)
    grey = np.arange(40 * 40, dtype=np.uint8).reshape(40, 40)
    write(tmp_path / "in" / "grey.png", grey)
    code, _, _ = run(["--input", tmp_path / "in", "--output", tmp_path / "out",
                      "--crop-size", 32, "--step", 16, "--workers", 1], capsys)
    assert code == 0
    tile = read(tmp_path / "out" / "deep_s004.png")  # rows/cols 0, 8 -> the 4th tile is at (8, 8)
    assert tile.dtype == np.uint16 and tile.max() > 255
    np.testing.assert_array_equal(tile, deep[8:40, 8:40])
    np.testing.assert_array_equal(read(tmp_path / "out" / "grey_s002.png"), grey[0:32, 8:40])


# ---------------------------------------------------------------------------------------------- pairs
def test_paired_tiles_align(tmp_path, capsys):
    # Different stems' images, partner files with different extensions (lossless BMP/PNG).
    for stem, (h, w) in {"a": (50, 70), "b": (48, 40)}.items():
        write(tmp_path / "lq" / f"{stem}.bmp", coord_image(h, w, third=100))
        write(tmp_path / "gt" / f"{stem}.png", coord_image(h, w, third=200))
    code, _, _ = run(["--input", tmp_path / "lq", tmp_path / "gt", "--output", tmp_path / "olq", tmp_path / "ogt",
                      "--crop-size", 32, "--step", 16, "--workers", 1], capsys)
    assert code == 0
    for stem in ("a", "b"):
        lq_tiles, gt_tiles = tiles_of(tmp_path / "olq", stem), tiles_of(tmp_path / "ogt", stem)
        assert [t.name for t in lq_tiles] == [t.name for t in gt_tiles] and lq_tiles
        for lt, gt in zip(lq_tiles, gt_tiles):
            a, b = read(lt), read(gt)
            np.testing.assert_array_equal(a[..., :2], b[..., :2])  # same place, pixel for pixel
            assert (a[..., 2] == 100).all() and (b[..., 2] == 200).all()  # each from its own folder


@pytest.mark.parametrize("scale", [2, 4])
def test_sr_pairs_align(tmp_path, capsys, scale):
    gt = coord_image(72, 100, third=50)
    lq = np.ascontiguousarray(gt[::scale, ::scale])  # LR pixel (i, j) carries the HR coordinates (i*s, j*s)
    write(tmp_path / "lr" / "img.png", lq)
    write(tmp_path / "hr" / "img.png", gt)
    code, _, _ = run(["--input", tmp_path / "lr", tmp_path / "hr", "--output", tmp_path / "olr", tmp_path / "ohr",
                      "--crop-size", 32, "--step", 16, "--scale", scale, "--workers", 1], capsys)
    assert code == 0
    hr_tiles, lr_tiles = tiles_of(tmp_path / "ohr", "img"), tiles_of(tmp_path / "olr", "img")
    # HR rows 0, 16, 32, 40 (72 = 64 + 8); columns 0, 16, 32, 48, 64, 68 (100 = 96 + 4): 24 tiles
    assert len(hr_tiles) == len(lr_tiles) == 24
    positions = []
    for lt, ht in zip(lr_tiles, hr_tiles):
        lr_tile, hr_tile = read(lt), read(ht)
        assert hr_tile.shape == (32, 32, 3) and lr_tile.shape == (32 // scale, 32 // scale, 3)
        np.testing.assert_array_equal(lr_tile, hr_tile[::scale, ::scale])
        positions.append((int(hr_tile[0, 0, 0]), int(hr_tile[0, 0, 1])))
    assert positions == [(y, x) for y in (0, 16, 32, 40) for x in (0, 16, 32, 48, 64, 68)]


def test_size_mismatch_is_one_error_naming_both_files(tmp_path, capsys):
    write(tmp_path / "lq" / "ok.png", coord_image(40, 40))
    write(tmp_path / "gt" / "ok.png", coord_image(40, 40))
    write(tmp_path / "lq" / "odd.png", coord_image(40, 48))
    write(tmp_path / "gt" / "odd.png", coord_image(40, 40))
    code, _, err = run(["--input", tmp_path / "lq", tmp_path / "gt", "--output", tmp_path / "o1", tmp_path / "o2",
                        "--crop-size", 32, "--step", 16], capsys)
    line = one_error_line(err)
    assert code == 2
    assert str(tmp_path / "lq" / "odd.png") in line and str(tmp_path / "gt" / "odd.png") in line
    assert "48x40" in line and "ok.png" not in line
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()  # checked before writing


def test_sr_size_mismatch_names_files(tmp_path, capsys):
    write(tmp_path / "lr" / "x.png", coord_image(20, 25))  # should be 20x25 for 40x50 at x2: this one is fine
    write(tmp_path / "hr" / "x.png", coord_image(40, 50))
    write(tmp_path / "lr" / "y.png", coord_image(20, 24))  # 1/2 of 40x50 would be 25 wide
    write(tmp_path / "hr" / "y.png", coord_image(40, 50))
    code, _, err = run(["--input", tmp_path / "lr", tmp_path / "hr", "--output", tmp_path / "a", tmp_path / "b",
                        "--crop-size", 32, "--step", 16, "--scale", 2], capsys)
    line = one_error_line(err)
    assert code == 2 and str(tmp_path / "lr" / "y.png") in line and str(tmp_path / "hr" / "y.png") in line
    assert "x.png" not in line


def test_missing_partners_are_named(tmp_path, capsys):
    write(tmp_path / "lq" / "both.png", coord_image(40, 40))
    write(tmp_path / "gt" / "both.png", coord_image(40, 40))
    write(tmp_path / "lq" / "only_lq.png", coord_image(40, 40))
    write(tmp_path / "gt" / "only_gt.png", coord_image(40, 40))
    code, _, err = run(["--input", tmp_path / "lq", tmp_path / "gt", "--output", tmp_path / "o1", tmp_path / "o2",
                        "--crop-size", 32, "--step", 16], capsys)
    line = one_error_line(err)
    assert code == 2 and "only_lq.png" in line and "only_gt.png" in line and "both.png" not in line
    assert not (tmp_path / "o1").exists()


def test_image_smaller_than_crop_is_named(tmp_path, capsys):
    write(tmp_path / "in" / "big.png", coord_image(40, 40))
    write(tmp_path / "in" / "tiny.png", coord_image(20, 60))
    code, _, err = run(["--input", tmp_path / "in", "--output", tmp_path / "out", "--crop-size", 32, "--step", 16],
                       capsys)
    line = one_error_line(err)
    assert code == 2 and "tiny.png" in line and "60x20" in line and "big.png" not in line


def test_option_errors_are_one_line(tmp_path, capsys):
    write(tmp_path / "in" / "a.png", coord_image(40, 40))
    cases = [
        (["--input", tmp_path / "in", "--output", tmp_path / "in"], "also an input folder"),
        (["--input", tmp_path / "in", "--output", tmp_path / "o", "--scale", 2], "needs paired folders"),
        (["--input", tmp_path / "in", tmp_path / "in", "--output", tmp_path / "o", tmp_path / "p",
          "--crop-size", 33, "--scale", 2], "multiples of --scale"),
        (["--input", tmp_path / "in", "--output", tmp_path / "o", tmp_path / "p"], "as many --output"),
        (["--input", tmp_path / "nowhere", "--output", tmp_path / "o"], "nowhere"),
        (["--input", tmp_path / "in", "--output", tmp_path / "o", "--compression-level", 12], "0 to 9"),
    ]
    for argv, needle in cases:
        code, _, err = run(argv, capsys)
        assert code == 2 and needle in one_error_line(err), (argv, err)


# ---------------------------------------------------------------------------------------------- safety
def test_no_overwrite_without_flag(tmp_path, capsys):
    write(tmp_path / "in" / "a.png", coord_image(40, 40, third=1))
    argv = ["--input", tmp_path / "in", "--output", tmp_path / "out", "--crop-size", 32, "--step", 16,
            "--workers", 1]
    assert run(argv, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    write(tmp_path / "in" / "a.png", coord_image(40, 40, third=2))  # new content
    code, _, err = run(argv, capsys)
    assert code == 2 and str(tmp_path / "out") in one_error_line(err) and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # untouched

    (tmp_path / "out" / "old_s001.png").write_bytes(b"stale tile")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    code, out, _ = run(argv + ["--overwrite"], capsys)
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["a_s001.png", "a_s002.png", "a_s003.png", "a_s004.png", "notes.txt"]
    assert (read(tmp_path / "out" / "a_s001.png")[..., 2] == 2).all()
    assert "notes.txt" in out


def test_dry_run_writes_nothing_and_counts(tmp_path, capsys):
    write(tmp_path / "lq" / "a.png", coord_image(50, 70))
    write(tmp_path / "gt" / "a.png", coord_image(50, 70))
    code, out, _ = run(["--input", tmp_path / "lq", tmp_path / "gt", "--output", tmp_path / "o1", tmp_path / "o2",
                        "--crop-size", 32, "--step", 16, "--dry-run"], capsys)
    assert code == 0 and "12 tiles" in out and "24 files" in out and "dry run" in out
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_interrupted_write_leaves_no_partial_png(tmp_path, monkeypatch):
    write(tmp_path / "in" / "a.png", coord_image(50, 70))
    real_replace = es.os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if Ctrl-C arrived between writing and renaming
        real_replace(src, dst)

    monkeypatch.setattr(es.os, "replace", flaky_replace)
    with pytest.raises(KeyboardInterrupt):
        es.extract_subimages([([tmp_path / "in"], [tmp_path / "out"])], crop_size=32, step=16, workers=1,
                             log=lambda line: None)
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == ["a_s001.png", "a_s002.png"]  # no temporary file, no third tile
    for name in left:
        assert read(tmp_path / "out" / name).shape == (32, 32, 3)


def test_worker_processes_give_the_same_tiles(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for i in range(3):
        write(tmp_path / "lq" / f"im{i}.png", rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
        write(tmp_path / "gt" / f"im{i}.png", rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    results = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        code, _, _ = run(["--input", tmp_path / "lq", tmp_path / "gt", "--output", out / "lq", out / "gt",
                          "--crop-size", 32, "--step", 16, "--workers", workers], capsys)
        assert code == 0
        results.append({p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))})
    assert results[0] == results[1] and len(results[0]) == 2 * 3 * 6  # rows 0, 8; columns 0, 16, 24


def test_tiles_feed_the_training_dataset(tmp_path, capsys):
    from ddr_restore.data.paired import PairedImageDataset

    write(tmp_path / "lq" / "a.png", coord_image(50, 70, third=10))
    write(tmp_path / "gt" / "a.png", coord_image(50, 70, third=20))
    code, _, _ = run(["--input", tmp_path / "lq", tmp_path / "gt", "--output", tmp_path / "tl", tmp_path / "tg",
                      "--crop-size", 32, "--step", 16, "--workers", 1], capsys)
    assert code == 0
    ds = PairedImageDataset(tmp_path / "tl", tmp_path / "tg", phase="train", gt_size=16, use_hflip=True,
                            use_rot=True)
    assert len(ds) == 12
    item = ds[5]
    assert item["lq"].shape == item["gt"].shape == (3, 16, 16)
    # Same crop/flip for both: the coordinate channels (written as cv2's B, G: RGB channels 2 and 1) agree; the
    # third (R) says which folder the pixels came from.
    assert (item["lq"][1:] == item["gt"][1:]).all()
    assert (item["lq"][0] * 255).round().eq(10).all() and (item["gt"][0] * 255).round().eq(20).all()


def test_help_shows_the_gopro_example(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert "datasets/GoPro/train/input_crops" in out and "datasets/GoPro/train/target_crops" in out
    assert "dataroot_lq: datasets/GoPro/train/input_crops" in out


def test_gopro_mini_dry_run(shared_data, tmp_path, capsys):
    root = shared_data / "gopro_mini" / "train"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    n = len(list((root / "target").glob("*.png")))
    code, out, _ = run(["--input", root / "input", root / "target", "--output", tmp_path / "lq", tmp_path / "gt",
                        "--dry-run"], capsys)
    assert code == 0
    assert f"{8 * n} tiles of 512x512 per folder" in out and "1280x720: 2x4 tiles" in out
    assert not (tmp_path / "lq").exists()


def test_groups_may_share_output_folders_but_not_tile_names(tmp_path, capsys):
    for seq, stem in (("seq1", "000001"), ("seq2", "000002"), ("seq3", "000001")):
        write(tmp_path / seq / "blur" / f"{stem}.png", coord_image(40, 40, third=1))
        write(tmp_path / seq / "sharp" / f"{stem}.png", coord_image(40, 40, third=2))
    out_lq, out_gt = tmp_path / "out" / "input", tmp_path / "out" / "target"

    def group(seq):
        return ["--input", tmp_path / seq / "blur", tmp_path / seq / "sharp", "--output", out_lq, out_gt]

    common = ["--crop-size", 32, "--step", 16, "--workers", 1]
    code, _, _ = run(group("seq1") + group("seq2") + common, capsys)
    assert code == 0 and len(list(out_lq.glob("*.png"))) == len(list(out_gt.glob("*.png"))) == 8
    # seq3 has the frame name of seq1: its tiles would replace seq1's.
    code, _, err = run(group("seq1") + group("seq3") + common + ["--overwrite"], capsys)
    line = one_error_line(err)
    assert code == 2 and str(tmp_path / "seq1" / "blur" / "000001.png") in line
    assert str(tmp_path / "seq3" / "blur" / "000001.png") in line


def test_bench_loader_without_data_is_one_error_line(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_loader.py"
    proc = subprocess.run([sys.executable, str(script), "--data", str(tmp_path / "absent")],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("bench_loader.py: error: ") and str(tmp_path / "absent") in lines[0]
