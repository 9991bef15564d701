"""Paired crop / augmentation helpers and the Restormer progressive-patch schedule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ddr_restore.data.transforms import (
    augment,
    pad_pair_to_size,
    paired_center_crop,
    paired_random_crop,
    progressive_crop,
    progressive_stage,
)
from ddr_restore.errors import InputError


def coord_image(h: int, w: int) -> np.ndarray:
    """Channel 0 = row index, channel 1 = column index, channel 2 = 7: every pixel knows where it came from."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, 7)], axis=2).astype(np.float32)


def orientation(patch: np.ndarray) -> tuple:
    """(transposed, row order sign, column order sign) of a patch cut from coord_image, computed independently."""
    r, c = patch[..., 0], patch[..., 1]
    if r[0, 0] != r[0, 1]:  # rows vary along the width: H and W were swapped
        return (True, int(np.sign(r[0, 1] - r[0, 0])), int(np.sign(c[1, 0] - c[0, 0])))
    return (False, int(np.sign(r[1, 0] - r[0, 0])), int(np.sign(c[0, 1] - c[0, 0])))


def test_paired_random_crop_is_aligned_and_random():
    lq = coord_image(30, 40)
    gt = 100.0 - lq  # gt is a pixelwise function of lq: any misalignment shows up
    torch.manual_seed(0)
    tops = set()
    for _ in range(30):
        lq_p, gt_p = paired_random_crop(lq, gt, 8)
        assert lq_p.shape == gt_p.shape == (8, 8, 3)
        np.testing.assert_array_equal(gt_p, 100.0 - lq_p)
        top, left = int(lq_p[0, 0, 0]), int(lq_p[0, 0, 1])
        np.testing.assert_array_equal(lq_p, lq[top : top + 8, left : left + 8])  # a contiguous window
        tops.add((top, left))
    assert len(tops) > 10


def test_paired_random_crop_sr_scale():
    lq = coord_image(12, 10)
    gt = np.repeat(np.repeat(lq, 3, axis=0), 3, axis=1)  # nearest x3 upsampling: gt(i,j) = lq(i//3, j//3)
    torch.manual_seed(1)
    for _ in range(10):
        lq_p, gt_p = paired_random_crop(lq, gt, 12, scale=3)
        assert lq_p.shape == (4, 4, 3) and gt_p.shape == (12, 12, 3)
        np.testing.assert_array_equal(gt_p, np.repeat(np.repeat(lq_p, 3, axis=0), 3, axis=1))
    with pytest.raises(InputError, match="multiple of scale"):
        paired_random_crop(lq, gt, 10, scale=3)


def test_paired_random_crop_errors_name_files():
    lq, gt = coord_image(10, 10), coord_image(10, 12)
    with pytest.raises(InputError, match=r"a\.png is 10x10.*b\.png is 12x10"):
        paired_random_crop(lq, gt, 4, lq_name="a.png", gt_name="b.png")
    with pytest.raises(InputError, match=r"b\.png is 10x10 .*smaller than gt_size 16"):
        paired_random_crop(lq, coord_image(10, 10), 16, lq_name="a.png", gt_name="b.png")


def test_augment_covers_all_8_symmetries_and_keeps_pairs_aligned():
    lq = coord_image(6, 6)
    gt = 100.0 - lq
    torch.manual_seed(0)
    seen = set()
    for _ in range(200):
        a, b = augment([lq, gt], hflip=True, rotation=True)
        np.testing.assert_array_equal(b, 100.0 - a)
        seen.add(orientation(a))
    assert len(seen) == 8
    seen_h = {orientation(augment([lq], hflip=True, rotation=False)[0]) for _ in range(50)}
    assert seen_h == {(False, 1, 1), (False, 1, -1)}  # only horizontal flips
    assert {orientation(augment([lq], hflip=False, rotation=False)[0]) for _ in range(5)} == {(False, 1, 1)}


def test_augment_same_transform_for_sr_pair():
    lq = coord_image(4, 5)
    gt = np.repeat(np.repeat(lq, 2, axis=0), 2, axis=1)
    torch.manual_seed(3)
    for _ in range(40):
        a, b = augment([lq, gt])
        np.testing.assert_array_equal(b, np.repeat(np.repeat(a, 2, axis=0), 2, axis=1))


def test_augment_views_match_copies_and_draw_the_same_random_numbers():
    lq = coord_image(6, 9).astype(np.uint16)  # integer images (the loader's native dtype) as well as float
    gt = 100 - lq
    for seed in range(12):
        copies = augment([lq, gt], generator=torch.Generator().manual_seed(seed))
        gen = torch.Generator().manual_seed(seed)
        views = augment([lq, gt], generator=gen, contiguous=False)
        for c, v, src in zip(copies, views, (lq, gt)):
            assert c.flags.c_contiguous and c.dtype == v.dtype == np.uint16
            assert np.shares_memory(v, src)  # no copy
            np.testing.assert_array_equal(v, c)
        # the same number of draws: the next number from both generators agrees
        ref = torch.Generator().manual_seed(seed)
        augment([lq], generator=ref)
        assert torch.randint(0, 1 << 30, (1,), generator=gen) == torch.randint(0, 1 << 30, (1,), generator=ref)


def test_paired_center_crop_position():
    lq = coord_image(20, 31)
    lq_p, gt_p = paired_center_crop(lq, 100.0 - lq, 10)
    assert (lq_p[0, 0, 0], lq_p[0, 0, 1]) == (5, 10)  # (20-10)//2, (31-10)//2
    np.testing.assert_array_equal(gt_p, 100.0 - lq_p)


def test_pad_pair_to_size_mirrors_edges_and_keeps_alignment():
    lq = coord_image(5, 7)
    gt = np.repeat(np.repeat(lq, 2, axis=0), 2, axis=1)
    lq_p, gt_p = pad_pair_to_size(lq, gt, 16, scale=2)
    assert lq_p.shape[:2] == (8, 8) and gt_p.shape[:2] == (16, 16)
    np.testing.assert_array_equal(lq_p[:5, :7], lq)
    assert lq_p[5, 0, 0] == 4 and lq_p[6, 0, 0] == 3  # edge row repeated, then mirrored
    np.testing.assert_array_equal(gt_p, np.repeat(np.repeat(lq_p, 2, axis=0), 2, axis=1))


# ------------------------------------------------------------------ progressive schedule
ITERS, BATCHES, SIZES = [3, 2, 4], [8, 5, 4], [128, 160, 192]


@pytest.mark.parametrize(
    "it, expected",
    [(1, (8, 128)), (3, (8, 128)), (4, (5, 160)), (5, (5, 160)), (6, (4, 192)), (9, (4, 192)), (1000, (4, 192))],
)
def test_progressive_stage_boundaries(it, expected):
    assert progressive_stage(it, ITERS, BATCHES, SIZES) == expected


def test_progressive_stage_restormer_schedule():
    # Restormer motion deblurring: iters [92k,64k,48k,36k,36k,24k] (anchors.md section 4.2)
    iters = [92000, 64000, 48000, 36000, 36000, 24000]
    batches, sizes = [8, 5, 4, 2, 1, 1], [128, 160, 192, 256, 320, 384]
    assert progressive_stage(92000, iters, batches, sizes) == (8, 128)
    assert progressive_stage(92001, iters, batches, sizes) == (5, 160)
    assert progressive_stage(300000, iters, batches, sizes) == (1, 384)


@pytest.mark.parametrize(
    "args, match",
    [
        ((1, [3, 2], BATCHES, SIZES), "same length"),
        ((1, [3, 0, 4], BATCHES, SIZES), "iters"),
        ((1, ITERS, [8, 5.5, 4], SIZES), "mini_batch_sizes"),
        ((1, ITERS, BATCHES, [128, -1, 3]), "gt_sizes"),
        ((0, ITERS, BATCHES, SIZES), "current_iter"),
        ((1, [], [], []), "iters"),
    ],
)
def test_progressive_stage_validation(args, match):
    with pytest.raises(InputError, match=match):
        progressive_stage(*args)


def test_progressive_crop_shapes_alignment_and_subsampling():
    b = 6
    lq = torch.rand(b, 3, 24, 20)
    lq[:, 2] = torch.arange(b, dtype=torch.float32).view(b, 1, 1)  # item id in channel 2
    gt = 1.0 - lq
    gen = torch.Generator().manual_seed(0)
    out_lq, out_gt = progressive_crop(lq, gt, 4, 16, gen)
    assert out_lq.shape == out_gt.shape == (4, 3, 16, 16)
    torch.testing.assert_close(out_gt, 1.0 - out_lq)
    ids = out_lq[:, 2, 0, 0].tolist()
    assert len(set(ids)) == 4  # without replacement
    for k, i in enumerate(ids):  # each patch is a window of its own item
        src = lq[int(i), 0]
        first = out_lq[k, 0, 0, 0]
        hits = (src == first).nonzero()
        assert any(torch.equal(src[t : t + 16, l : l + 16], out_lq[k, 0]) for t, l in hits.tolist())
    # short loader batch: all items kept
    assert progressive_crop(lq[:2], gt[:2], 4, 8)[0].shape == (2, 3, 8, 8)


def test_progressive_crop_sr_and_errors():
    lq = torch.rand(3, 3, 8, 8)
    gt = lq.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    a, b = progressive_crop(lq, gt, 2, 8, scale=2)
    assert a.shape == (2, 3, 4, 4) and b.shape == (2, 3, 8, 8)
    torch.testing.assert_close(b, a.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    with pytest.raises(InputError, match="larger than"):
        progressive_crop(lq, gt, 2, 32, scale=2)
    with pytest.raises(InputError, match="multiple of scale"):
        progressive_crop(lq, gt, 2, 7, scale=2)
    with pytest.raises(InputError, match="batch"):
        progressive_crop(lq, gt, 0, 8, scale=2)
    with pytest.raises(InputError, match="do not match"):
        progressive_crop(lq, gt, 2, 4)
