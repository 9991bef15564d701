"""PairedImageDataset: layouts, aligned crops, augmentation, and errors that name the offending files."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ddr_restore.data import LOADER_KEYS, build_dataset
from ddr_restore.data.paired import PairedImageDataset
from ddr_restore.errors import InputError, MissingPathError
from ddr_restore.imageio import write_image


def coord_image(h: int, w: int) -> np.ndarray:
    """uint8 RGB: R = row, G = column, B = 200 (sizes < 256 so positions are exact)."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, 200)], axis=2).astype(np.uint8)


def make_pair_folders(root: Path, names=("a", "b", "c"), h=40, w=48, lq_tmpl="{}", scale=1):
    """lq = coordinate image, gt = 255 - lq (pixelwise function, so any misalignment is visible)."""
    lq_dir, gt_dir = root / "input", root / "target"
    for n in names:
        lq = coord_image(h, w)
        gt = 255 - lq
        if scale > 1:
            gt = np.repeat(np.repeat(gt, scale, axis=0), scale, axis=1)
        write_image(lq_dir / f"{lq_tmpl.format(n)}.png", lq)
        write_image(gt_dir / f"{n}.png", gt)
    return lq_dir, gt_dir


def as_u8(t: torch.Tensor) -> np.ndarray:
    return (t.numpy().transpose(1, 2, 0) * 255.0).round().astype(np.int64)


def test_folder_pairs_train_crop_alignment(tmp_path):
    lq_dir, gt_dir = make_pair_folders(tmp_path)
    ds = PairedImageDataset(lq_dir, gt_dir, phase="train", gt_size=16)
    assert len(ds) == 3
    assert [Path(p).name for p, _ in ds.pairs] == ["a.png", "b.png", "c.png"]
    torch.manual_seed(0)
    corners = set()
    for i in range(12):
        item = ds[i % 3]
        assert Path(item["lq_path"]).name == Path(item["gt_path"]).name
        lq, gt = as_u8(item["lq"]), as_u8(item["gt"])
        assert lq.shape == gt.shape == (16, 16, 3)
        np.testing.assert_array_equal(gt, 255 - lq)
        top, left = lq[0, 0, 0], lq[0, 0, 1]
        np.testing.assert_array_equal(lq, coord_image(40, 48)[top : top + 16, left : left + 16])
        corners.add((top, left))
        assert item["lq"].dtype == torch.float32
    assert len(corners) > 5


def test_flips_and_rotations_keep_alignment(tmp_path):
    lq_dir, gt_dir = make_pair_folders(tmp_path, names=("a",))
    ds = PairedImageDataset(lq_dir, gt_dir, gt_size=16, use_hflip=True, use_rot=True)
    torch.manual_seed(0)
    orientations = set()
    for _ in range(120):
        item = ds[0]
        lq, gt = as_u8(item["lq"]), as_u8(item["gt"])
        np.testing.assert_array_equal(gt, 255 - lq)
        r = lq[..., 0]
        transposed = r[0, 0] != r[0, 1]
        orientations.add((transposed, int(np.sign(lq[1, 0, :2].sum() - lq[0, 0, :2].sum())),
                          int(np.sign(lq[0, 1, :2].sum() - lq[0, 0, :2].sum()))))
    assert len(orientations) == 8


def test_determinism_given_torch_seed(tmp_path):
    lq_dir, gt_dir = make_pair_folders(tmp_path, names=("a",))
    ds = PairedImageDataset(lq_dir, gt_dir, gt_size=8, use_hflip=True, use_rot=True)
    torch.manual_seed(123)
    first = [ds[0]["lq"] for _ in range(3)]
    torch.manual_seed(123)
    second = [ds[0]["lq"] for _ in range(3)]
    for x, y in zip(first, second):
        torch.testing.assert_close(x, y)


def test_dataloader_workers_draw_different_crops(tmp_path):
    lq_dir, gt_dir = make_pair_folders(tmp_path, names=("a",), h=64, w=64)
    ds = PairedImageDataset(lq_dir, gt_dir, gt_size=8)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.ConcatDataset([ds] * 4), batch_size=1, num_workers=2)
    corners = {tuple(as_u8(b["lq"][0])[0, 0, :2]) for b in loader}
    assert len(corners) > 1


def test_validation_whole_images_and_centre_crop(tmp_path):
    lq_dir, gt_dir = make_pair_folders(tmp_path, names=("a",), h=40, w=48)
    whole = PairedImageDataset(lq_dir, gt_dir, phase="val")[0]
    assert whole["lq"].shape == whole["gt"].shape == (3, 40, 48)
    np.testing.assert_array_equal(as_u8(whole["lq"]), coord_image(40, 48))
    crop = PairedImageDataset(lq_dir, gt_dir, phase="val", gt_size=16)[0]
    lq = as_u8(crop["lq"])
    assert lq.shape == (16, 16, 3) and (lq[0, 0, 0], lq[0, 0, 1]) == (12, 16)  # (40-16)//2, (48-16)//2
    np.testing.assert_array_equal(as_u8(crop["gt"]), 255 - lq)


def test_sr_scale_and_filename_tmpl(tmp_path):
    lq_dir, gt_dir = make_pair_folders(tmp_path, names=("0001", "0002"), h=20, w=24, lq_tmpl="{}x2", scale=2)
    ds = PairedImageDataset(lq_dir, gt_dir, gt_size=16, scale=2, filename_tmpl="{}x2", use_hflip=True, use_rot=True)
    names = [(Path(a).name, Path(b).name) for a, b in ds.pairs]
    assert names == [("0001x2.png", "0001.png"), ("0002x2.png", "0002.png")]
    torch.manual_seed(0)
    for _ in range(10):
        item = ds[1]
        lq, gt = as_u8(item["lq"]), as_u8(item["gt"])
        assert lq.shape == (8, 8, 3) and gt.shape == (16, 16, 3)
        np.testing.assert_array_equal(gt, np.repeat(np.repeat(255 - lq, 2, axis=0), 2, axis=1))


def test_sr_validation_crops_oversized_gt(tmp_path):
    write_image(tmp_path / "lq" / "x.png", coord_image(10, 12))
    write_image(tmp_path / "gt" / "x.png", np.zeros((21, 25, 3), np.uint8))  # 1 px more than lq*2
    item = PairedImageDataset(tmp_path / "lq", tmp_path / "gt", phase="val", scale=2)[0]
    assert item["gt"].shape == (3, 20, 24)
    with pytest.raises(InputError, match="size"):
        PairedImageDataset(tmp_path / "lq", tmp_path / "gt", phase="train", gt_size=8, scale=2)


def test_gopro_layout_prefixes_sequences(tmp_path):
    for seq in ("GOPR0001_11_00", "GOPR0002_11_00"):
        for n in ("000001", "000002"):
            write_image(tmp_path / seq / "blur" / f"{n}.png", coord_image(20, 20))
            write_image(tmp_path / seq / "sharp" / f"{n}.png", 255 - coord_image(20, 20))
    ds = PairedImageDataset(tmp_path, tmp_path, phase="val", layout="gopro")
    assert len(ds) == 4
    assert len({(Path(lq).parent.parent.name, Path(lq).name) for lq, _ in ds.pairs}) == 4
    item = ds[3]
    assert Path(item["lq_path"]).parts[-3:] == ("GOPR0002_11_00", "blur", "000002.png")
    assert Path(item["gt_path"]).parts[-3:] == ("GOPR0002_11_00", "sharp", "000002.png")
    write_image(tmp_path / "GOPR0002_11_00" / "sharp" / "000003.png", coord_image(20, 20))
    with pytest.raises(MissingPathError, match="GOPR0002_11_00/000003.png"):
        PairedImageDataset(tmp_path, tmp_path, phase="val", layout="gopro")


def test_realblur_list_layout(tmp_path):
    sub = "RealBlur-J_ECC_IMCORR_centroid_itensity_ref"
    lines = []
    for scene, k in (("scene001", 1), ("scene001", 2), ("scene002", 1)):
        write_image(tmp_path / sub / scene / "gt" / f"gt_{k}.png", 255 - coord_image(18, 22))
        write_image(tmp_path / sub / scene / "blur" / f"blur_{k}.png", coord_image(18, 22))
        lines.append(f"{sub}/{scene}/gt/gt_{k}.png {sub}/{scene}/blur/blur_{k}.png")
    lst = tmp_path / "RealBlur_J_test_list.txt"
    lst.write_text("\n".join(lines) + "\n\n")
    ds = build_dataset({"type": "PairedImageDataset", "dataroot_gt": str(tmp_path), "dataroot_lq": str(tmp_path),
                        "meta_info_file": str(lst), "layout": "realblur"}, "val")
    assert len(ds) == 3
    item = ds[2]
    assert item["lq_path"].endswith("blur_1.png") and "scene002" in item["lq_path"]
    assert item["gt_path"].endswith("gt_1.png") and "scene002" in item["gt_path"]
    np.testing.assert_array_equal(as_u8(item["gt"]), 255 - as_u8(item["lq"]))
    # a missing entry is reported with its line number
    lst.write_text(lines[0] + "\n" + f"{sub}/scene009/gt/gt_1.png {sub}/scene009/blur/blur_1.png\n")
    with pytest.raises(MissingPathError, match=r"line 2: .*scene009"):
        PairedImageDataset(tmp_path, tmp_path, phase="val", layout="realblur", meta_info_file=lst)
    lst.write_text(lines[0] + " extra\n")
    with pytest.raises(InputError, match=r"line 1"):
        PairedImageDataset(tmp_path, tmp_path, phase="val", layout="realblur", meta_info_file=lst)
    with pytest.raises(InputError, match="meta_info_file"):
        PairedImageDataset(tmp_path, tmp_path, phase="val", layout="realblur")


def test_explicit_list_file(tmp_path):
    lq_dir, gt_dir = make_pair_folders(tmp_path, names=("a", "b", "c", "d"))
    (tmp_path / "input" / "b.png").rename(tmp_path / "input" / "b_blur.png")
    lst = tmp_path / "list.txt"
    lst.write_text("# a comment\na.png\nb_blur.png b.png\nc.png (40,48,3)\n")  # d is not listed
    ds = PairedImageDataset(lq_dir, gt_dir, phase="val", meta_info_file=lst)
    assert [(Path(a).name, Path(b).name) for a, b in ds.pairs] == [
        ("a.png", "a.png"), ("b_blur.png", "b.png"), ("c.png", "c.png")]
    lst.write_text("a.png\nzzz.png\n")
    with pytest.raises(MissingPathError, match=r"list\.txt.*line 2: .*zzz\.png"):
        PairedImageDataset(lq_dir, gt_dir, phase="val", meta_info_file=lst)
    with pytest.raises(MissingPathError, match="nolist.txt"):
        PairedImageDataset(lq_dir, gt_dir, phase="val", meta_info_file=tmp_path / "nolist.txt")


# ------------------------------------------------------------------ bad input
def test_missing_partners_are_all_listed(tmp_path):
    lq_dir, gt_dir = make_pair_folders(tmp_path, names=("a", "b", "c", "d"))
    (lq_dir / "b.png").unlink()
    (lq_dir / "d.png").unlink()
    write_image(lq_dir / "zz.png", coord_image(40, 48))
    with pytest.raises(MissingPathError, match=r"2 gt image\(s\).*b\.png, d\.png.*1 lq image\(s\).*zz\.png"):
        PairedImageDataset(lq_dir, gt_dir, gt_size=16)


def test_size_mismatch_names_both_files(tmp_path):
    lq_dir, gt_dir = make_pair_folders(tmp_path, names=("a", "b"))
    write_image(gt_dir / "b.png", np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(InputError, match=r"input[/\\]b\.png: 48x40 \(WxH\) but its gt .*target[/\\]b\.png is 50x40"):
        PairedImageDataset(lq_dir, gt_dir, gt_size=16)
    # the load-time check (header pre-check off) names both files too
    ds = PairedImageDataset(lq_dir, gt_dir, gt_size=16, check_sizes=False)
    with pytest.raises(InputError, match=r"input[/\\]b\.png is 48x40.*target[/\\]b\.png is 50x40"):
        ds[1]


def test_unreadable_image_names_file(tmp_path):
    lq_dir, gt_dir = make_pair_folders(tmp_path, names=("a",))
    (lq_dir / "a.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match=r"input[/\\]a\.png: not a readable image"):
        PairedImageDataset(lq_dir, gt_dir, gt_size=16)
    # with the build-time check off, reading the item names the file
    ds = PairedImageDataset(lq_dir, gt_dir, gt_size=16, check_files=False)
    with pytest.raises(InputError, match=r"input[/\\]a\.png"):
        ds[0]


def test_too_small_image_and_padding(tmp_path):
    lq_dir, gt_dir = make_pair_folders(tmp_path, names=("a",), h=10, w=12)
    with pytest.raises(InputError, match=r"target[/\\]a\.png: 12x10 \(WxH\), smaller than gt_size 16.*pad_to_gt_size"):
        PairedImageDataset(lq_dir, gt_dir, gt_size=16)
    ds = PairedImageDataset(lq_dir, gt_dir, gt_size=16, pad_to_gt_size=True)
    torch.manual_seed(0)
    item = ds[0]
    lq, gt = as_u8(item["lq"]), as_u8(item["gt"])
    assert lq.shape == gt.shape == (16, 16, 3)
    np.testing.assert_array_equal(gt, 255 - lq)
    np.testing.assert_array_equal(lq[10], lq[9])  # mirror padding repeats the edge row: no black border
    ds_nocheck = PairedImageDataset(lq_dir, gt_dir, gt_size=16, check_sizes=False)
    with pytest.raises(InputError, match=r"target[/\\]a\.png is 12x10"):
        ds_nocheck[0]


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty_lq").mkdir()
    (tmp_path / "empty_gt").mkdir()
    with pytest.raises(InputError, match="no images .*empty_gt"):
        PairedImageDataset(tmp_path / "empty_lq", tmp_path / "empty_gt", phase="val")
    with pytest.raises(MissingPathError, match="dataroot_lq folder not found: .*nowhere"):
        PairedImageDataset(tmp_path / "nowhere", tmp_path / "empty_gt", phase="val")


def test_option_validation(tmp_path):
    lq_dir, gt_dir = make_pair_folders(tmp_path, names=("a",))
    with pytest.raises(InputError, match="gt_size is required"):
        PairedImageDataset(lq_dir, gt_dir, phase="train")
    with pytest.raises(InputError, match="layout"):
        PairedImageDataset(lq_dir, gt_dir, phase="val", layout="lmdb")
    with pytest.raises(InputError, match="lmdb"):
        PairedImageDataset(lq_dir, gt_dir, phase="val", io_backend={"type": "lmdb"})
    with pytest.raises(TypeError, match="use_hfilp"):  # a typo is caught, with the option path
        build_dataset({"type": "PairedImageDataset", "dataroot_lq": str(lq_dir), "dataroot_gt": str(gt_dir),
                       "use_hfilp": True}, "val")
    alias = PairedImageDataset(lq_dir, gt_dir, gt_size=8, use_flip=True)
    assert alias.use_hflip and not alias.use_rot
    restormer = PairedImageDataset(lq_dir, gt_dir, gt_size=8, geometric_augs=True)
    assert restormer.use_hflip and restormer.use_rot


def test_build_dataset_strips_loader_keys_and_maps_phase(tmp_path):
    lq_dir, gt_dir = make_pair_folders(tmp_path, names=("a",))
    opt = {"name": "tiny", "type": "PairedImageDataset", "dataroot_lq": str(lq_dir), "dataroot_gt": str(gt_dir),
           "gt_size": 16, "phase": "train", "io_backend": {"type": "disk"}}
    opt.update({k: 1 for k in LOADER_KEYS})
    before = dict(opt)
    train = build_dataset(opt, "train")
    val = build_dataset(opt, "val_1")
    assert opt == before
    assert (train.phase, val.phase, train.name) == ("train", "val", "tiny")
    with pytest.raises(KeyError, match=r"datasets\.val_1\.type"):
        build_dataset({"type": "NoSuchDataset"}, "val_1")


def test_gopro_mini_loads(shared_data):
    root = shared_data / "gopro_mini" / "train"
    ds = PairedImageDataset(root / "input", root / "target", phase="val")
    assert len(ds) == 11
    psnrs = []
    for i in range(len(ds)):
        item = ds[i]
        assert item["lq"].shape == item["gt"].shape == (3, 720, 1280)
        lq = item["lq"].double().numpy() * 255.0
        gt = item["gt"].double().numpy() * 255.0
        psnrs.append(10.0 * np.log10(255.0**2 / np.mean((lq - gt) ** 2)))
    # channel order: the dataset's RGB tensor equals OpenCV's BGR file read, reversed
    bgr = cv2.imread(str(ds.pairs[0][1]), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(as_u8(ds[0]["gt"]), bgr[..., ::-1].astype(np.int64))
    assert all(20.0 < p < 35.0 for p in psnrs), psnrs


# ------------------------------------------------------------------ integer-first loading (issue 11, target 3)
def _float_first_read(path: Path) -> np.ndarray:
    """How items were read before the loader kept integers: the whole file to float32 [0,1] RGB, then cropped."""
    img = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
    img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 65535.0)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)


class _FloatFirst:
    """Mixin: the float-first item pipeline (decode -> float32 -> crop/pad -> flips -> CHW), the reference."""

    def __getitem__(self, index):
        from ddr_restore.data.transforms import augment, pad_pair_to_size, paired_center_crop, paired_random_crop

        lq_path, gt_path = self.pairs[index]
        lq, gt = _float_first_read(lq_path), _float_first_read(gt_path)
        lh, lw = lq.shape[:2]
        if self.scale > 1:
            gt = gt[: lh * self.scale, : lw * self.scale]
        if self.gt_size is not None:
            if self.pad_to_gt_size:
                lq, gt = pad_pair_to_size(lq, gt, self.gt_size, self.scale)
            if self.phase == "train":
                lq, gt = paired_random_crop(lq, gt, self.gt_size, self.scale)
            else:
                lq, gt = paired_center_crop(lq, gt, self.gt_size, self.scale)
        if self.phase == "train" and (self.use_hflip or self.use_rot):
            lq, gt = augment([lq, gt], hflip=self.use_hflip, rotation=self.use_rot)
        chw = [torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))) for a in (lq, gt)]
        return {"lq": chw[0], "gt": chw[1], "lq_path": str(lq_path), "gt_path": str(gt_path)}


class _FloatFirstPaired(_FloatFirst, PairedImageDataset):
    pass


def _noise(shape, dtype, seed):
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


# name: (bit depth, file channels, scale, lq (h, w), gt extra pixels (modcrop), gt_size, phase, pad_to_gt_size)
NATIVE_CASES = {
    "8bit_x1": (8, 3, 1, (37, 45), 0, 16, "train", False),
    "16bit_x1": (16, 3, 1, (37, 45), 0, 16, "train", False),
    "8bit_x2": (8, 3, 2, (19, 23), 0, 16, "train", False),
    "16bit_x2_realsr_modcrop": (16, 3, 2, (19, 23), 1, 16, "train", False),
    "8bit_x2_realsr_modcrop": (8, 3, 2, (19, 23), 1, 16, "train", False),
    "16bit_pad": (16, 3, 1, (10, 13), 0, 16, "train", True),
    "8bit_x2_pad": (8, 3, 2, (6, 9), 0, 16, "train", True),
    "16bit_grey_replicate": (16, 1, 1, (21, 30), 0, 16, "train", False),
    "8bit_rgba_drop": (8, 4, 1, (21, 30), 0, 16, "train", False),
    "16bit_val_whole": (16, 3, 1, (21, 30), 0, None, "val", False),
    "8bit_x2_val_centre": (8, 3, 2, (19, 23), 0, 16, "val", False),
}


def _native_case_dataset(root: Path, case: str, reference: bool):
    from ddr_restore.data.realsr import RealSRPairedDataset

    depth, channels, s, (h, w), extra, gt_size, phase, pad = NATIVE_CASES[case]
    dtype = np.uint8 if depth == 8 else np.uint16
    shape = lambda hh, ww: (hh, ww) if channels == 1 else (hh, ww, channels)  # noqa: E731
    realsr = "realsr" in case
    common = dict(phase=phase, gt_size=gt_size, scale=s, pad_to_gt_size=pad, gray="replicate", alpha="drop",
                  use_hflip=phase == "train", use_rot=phase == "train")
    if realsr:
        folder = root / "Canon" / "Train" / str(s)
        files = [(folder / f"Canon_{i:03d}_LR{s}.png", folder / f"Canon_{i:03d}_HR.png") for i in range(3)]
    else:
        files = [(root / "input" / f"{i}.png", root / "target" / f"{i}.png") for i in range(3)]
    if not files[0][0].exists():
        for i, (lq_p, gt_p) in enumerate(files):
            lq_p.parent.mkdir(parents=True, exist_ok=True)
            gt_p.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(lq_p), _noise(shape(h, w), dtype, 2 * i))
            assert cv2.imwrite(str(gt_p), _noise(shape(h * s + extra, w * s + extra), dtype, 2 * i + 1))
    if realsr:
        cls = type("_FloatFirstRealSR", (_FloatFirst, RealSRPairedDataset), {}) if reference else RealSRPairedDataset
        return cls(root, layout="realsr", factor=s, **common)
    cls = _FloatFirstPaired if reference else PairedImageDataset
    return cls(root / "input", root / "target", **common)


def _batches(ds, seed: int, progressive: bool):
    from torch.utils.data import DataLoader

    from ddr_restore.data.transforms import progressive_crop
    from ddr_restore.train.sampling import ResumableSampler, SeededDataset

    # the trainer's wiring: per-sample seeds from the sampler, the RNG reset around each item
    loader = DataLoader(SeededDataset(ds), batch_size=2, drop_last=True,
                        sampler=ResumableSampler(len(ds), seed, enlarge_ratio=4))
    out = []
    gen = torch.Generator().manual_seed(seed)
    for batch in loader:
        if progressive:  # Restormer's progressive patches, cut from the loader's batch
            batch["lq"], batch["gt"] = progressive_crop(batch["lq"], batch["gt"], 1, 8, gen, scale=ds.scale)
        out.append(batch)
    return out


@pytest.mark.parametrize("case", sorted(NATIVE_CASES))
def test_integer_first_loading_gives_the_float_first_batches(tmp_path, case):
    """Keeping uint8/uint16 through crop/pad/flips and converting only the patch changes no value and no draw."""
    new = _native_case_dataset(tmp_path, case, reference=False)
    ref = _native_case_dataset(tmp_path, case, reference=True)
    depth, _, s, (h, w), _, gt_size, phase, _ = NATIVE_CASES[case]
    for seed in (0, 5):
        got, want = _batches(new, seed, progressive=phase == "train"), _batches(ref, seed, phase == "train")
        assert len(got) == len(want) == 6
        for g, r in zip(got, want):
            assert g["lq_path"] == r["lq_path"] and g["gt_path"] == r["gt_path"]
            for key in ("lq", "gt"):
                assert g[key].dtype == torch.float32
                assert g[key].shape == r[key].shape
                assert torch.equal(g[key], r[key]), (case, seed, key)  # bit-identical
    # the cases test something: crops vary between seeds, and 16-bit files keep values between the 8-bit steps
    item = new[0]
    if phase == "train":
        assert item["gt"].shape[-2:] == (gt_size, gt_size)
        batches = [_batches(new, seed, False)[0]["gt"] for seed in (0, 5)]
        assert not torch.equal(*batches)
    else:
        assert item["gt"].shape[-2:] == ((gt_size, gt_size) if gt_size else (h * s, w * s))
    if depth == 16:
        assert ((item["gt"] * 65535).round().long() % 257 != 0).any()
