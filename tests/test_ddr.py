"""DDR descriptor, loss, BIQA score and ddr-score CLI, against independent computations (random CLIP, offline)."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms as T
from skimage import data as skdata

from ddr_restore.ddr import descriptor as descriptor_module
from ddr_restore.ddr.clip_backend import ClipBundle, load_clip
from ddr_restore.ddr.descriptor import DDR, biqa_patches
from ddr_restore.ddr.prompts import PROMPTS
from ddr_restore.ddr.score import main as score_main
from ddr_restore.ddr.score import score_paths
from ddr_restore.imageio import write_image

# The official prompt pairs, typed here from the reference notes (not imported from the code under test).
OFFICIAL = {
    "color": ("A real color photo with high-quality.", "A unnatural color photo with low-quality."),
    "noise": ("A clean photo with high-quality.", "A noise degraded photo with low-quality."),
    "blur": ("A sharp photo with high-quality.", "A blurry photo with low-quality."),
    "exposure": ("A natural exposure photo with high-quality.", "A unnatural exposure photo with low-quality."),
    "content": ("A clear content photo with high-quality.", "A bad content photo with low-quality."),
}
ALL = ("blur", "color", "noise", "exposure", "content")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


pytestmark = pytest.mark.usefixtures("one_thread")  # CLIP tests run single-threaded (conftest)


@pytest.fixture(scope="module")
def bundle(one_thread) -> ClipBundle:
    torch.manual_seed(0)
    return load_clip("ViT-B-32", "none")


@pytest.fixture(scope="module")
def ddr(bundle) -> DDR:
    return DDR(clip=bundle, degradations=ALL)


def tiny_bundle() -> ClipBundle:
    """A very small CLIP (same code path, 224 input) for tests that must copy or convert the model."""
    torch.manual_seed(1)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=224, layers=1, width=64, patch_size=32, head_width=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
        quick_gelu=True,
    ).eval()
    model.requires_grad_(False)
    return ClipBundle(model, open_clip.get_tokenizer("ViT-B-32"), "tiny", "random", True, 224, CLIP_MEAN, CLIP_STD)


_TEXT = {}


def _text(model, prompt):
    # Cached per (model, prompt): text encoding dominates the test time and does not depend on the image.
    key = (id(model), prompt)
    if key not in _TEXT:
        _TEXT[key] = model.encode_text(open_clip.tokenize([prompt]))
    return _TEXT[key]


def reference_per_type(model, x, types, antialias=False):
    """The official DDR.py path, written out literally: Resize(224) + Normalize, encode_image, encode_text of each
    prompt, adaptation with torch.std, BxB cosine-distance matrix, then its diagonal."""
    with torch.no_grad():
        resize = T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=antialias)
        tf = T.Compose([resize, T.Normalize(CLIP_MEAN, CLIP_STD)])
        feat = model.encode_image(tf(x))
        cols = []
        for t in types:
            clean, degraded = _text(model, OFFICIAL[t][0]), _text(model, OFFICIAL[t][1])
            content = degraded - clean
            c_mean, c_std = content.mean(dim=-1, keepdim=True), torch.std(content, dim=-1, keepdim=True) + 1e-3
            s_mean, s_std = feat.mean(dim=-1, keepdim=True), torch.std(feat, dim=-1, keepdim=True)
            adapted = (content - c_mean) / c_std * s_std + s_mean
            feat_d = feat + adapted
            a = feat / feat.norm(dim=1, keepdim=True)
            b = feat_d / feat_d.norm(dim=1, keepdim=True)
            dist = 1 - a @ b.t()
            cols.append(torch.stack([dist[i, i] for i in range(x.shape[0])]))
        return torch.stack(cols, dim=1)


def test_prompts_word_for_word():
    assert {k: tuple(v) for k, v in PROMPTS.items()} == OFFICIAL


def test_per_type_matches_official_path(ddr, bundle):
    torch.manual_seed(2)
    x = torch.rand(3, 3, 96, 96)
    got = ddr.per_type(x)
    ref = reference_per_type(bundle.model, x, ALL)
    assert got.shape == (3, 5) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    # The random model still gives distinct responses per type and image (the test is not comparing zeros).
    assert ref.std() > 1e-3


def test_antialias_option(bundle):
    x = torch.rand(2, 3, 480, 480)  # downscaling, where antialiasing matters
    got = DDR(clip=bundle, degradations=["exposure"], antialias=True).per_type(x)
    torch.testing.assert_close(got, reference_per_type(bundle.model, x, ["exposure"], antialias=True), atol=1e-5, rtol=0)
    assert (got - reference_per_type(bundle.model, x, ["exposure"])).abs().max() > 1e-6


def test_forward_sign_and_selection(bundle):
    torch.manual_seed(3)
    x = torch.rand(2, 3, 64, 64)
    d2 = DDR(clip=bundle, degradations=["noise", "blur"])
    ref = reference_per_type(bundle.model, x, ("noise", "blur"))
    loss = d2(x)
    assert loss.dim() == 0
    torch.testing.assert_close(loss, -ref.mean(dim=1).mean(), atol=1e-5, rtol=0)
    assert loss.item() < 0  # loss = -mean Q and Q = 1 - cos > 0 here
    torch.testing.assert_close(d2.q(x), ref.mean(dim=1), atol=1e-5, rtol=0)


def test_gradients_reach_input_not_clip(ddr):
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    ddr(x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert list(ddr.parameters()) == []  # CLIP weights are frozen buffers
    assert all(not b.requires_grad and b.grad is None for b in ddr.clip_model.buffers())


def test_clip_stays_in_eval_mode(ddr):
    parent = torch.nn.ModuleDict({"ddr": ddr, "net": torch.nn.Conv2d(3, 3, 1)})
    parent.train()
    assert ddr.training and not ddr.clip_model.training
    assert not any(m.training for m in ddr.clip_model.modules())
    parent.requires_grad_(True)
    assert not any(b.requires_grad for b in ddr.clip_model.buffers())
    assert len(ddr.clip_model.state_dict()) > 100  # weights still saved/moved as buffers
    parent.eval()


def test_buffers_move_with_to():
    d64 = DDR(clip=tiny_bundle(), degradations=["blur", "color"]).to(torch.float64)
    assert d64.text_directions.dtype == torch.float64 and d64.text_directions_std.dtype == torch.float64
    assert d64.mean.dtype == torch.float64 and d64.std.dtype == torch.float64
    # Standardised buffer = (T - mean) / (unbiased std + 1e-3), recomputed here from the raw directions.
    t = d64.text_directions
    standardised = (t - t.mean(-1, keepdim=True)) / (t.std(-1, keepdim=True) + 1e-3)
    torch.testing.assert_close(d64.text_directions_std, standardised)
    x = torch.rand(2, 3, 40, 40, dtype=torch.float64)
    out = d64.per_type(x)
    assert out.dtype == torch.float64
    d32 = DDR(clip=tiny_bundle(), degradations=["blur", "color"])
    torch.testing.assert_close(out.float(), d32.per_type(x.float()), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="meta"):
        d32(torch.rand(1, 3, 32, 32, device="meta"))


def test_batch_size_invariance(ddr):
    torch.manual_seed(4)
    x = torch.rand(4, 3, 64, 64)
    full = ddr.per_type(x)
    singles = torch.cat([ddr.per_type(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, singles, atol=1e-5, rtol=0)
    q_full = ddr.quality_score(x[:3, :, :40, :60])
    q_single = torch.cat([ddr.quality_score(x[i : i + 1, :, :40, :60]) for i in range(3)])
    torch.testing.assert_close(q_full, q_single, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "hw, side, offsets",
    [
        ((384, 512), 384, [(0, 0), (0, 128)]),  # TID2013/KADID 512x384 (WxH)
        ((768, 1024), 768, [(0, 0), (0, 256)]),  # KonIQ
        ((1200, 1600), 1200, [(0, 0), (0, 400)]),  # CID2013
        ((512, 1024), 512, [(0, 0), (0, 256), (0, 512)]),  # 2:1 -> 3 patches
        ((512, 384), 384, [(0, 0), (128, 0)]),  # portrait
        ((720, 1280), 720, [(0, 0), (0, 560)]),  # GoPro frame
        ((500, 500), 500, [(0, 0)]),  # square: the two identical patches are scored once
    ],
)
def test_biqa_patch_geometry(hw, side, offsets):
    assert biqa_patches(*hw) == (side, offsets)


def test_biqa_square_without_dedupe():
    assert biqa_patches(512, 512, dedupe=False) == (512, [(0, 0), (0, 0)])


def test_quality_score_is_mean_over_patches(ddr, bundle):
    torch.manual_seed(5)
    x = torch.rand(2, 3, 48, 100)  # side 48, n = 100 // 48 + 1 = 3, stride (100 - 48) // 2 = 26
    manual = torch.stack(
        [reference_per_type(bundle.model, x[:, :, :, o : o + 48], ALL) for o in (0, 26, 52)], dim=0
    ).mean(dim=0)
    torch.testing.assert_close(ddr.quality_score(x, per_type=True), manual, atol=1e-5, rtol=0)
    torch.testing.assert_close(ddr.quality_score(x), manual.mean(dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(ddr.quality_score(x, max_batch=2), manual.mean(dim=1), atol=1e-5, rtol=0)
    # Portrait: patches slide vertically.
    xp = x.transpose(2, 3).contiguous()
    manual_p = torch.stack([reference_per_type(bundle.model, xp[:, :, o : o + 48], ALL) for o in (0, 26, 52)]).mean(0)
    torch.testing.assert_close(ddr.quality_score(xp, per_type=True), manual_p, atol=1e-5, rtol=0)
    # Square: equals the whole-image score (two identical patches in the official code).
    xs = x[:, :, :, :48]
    ref_square = reference_per_type(bundle.model, xs, ALL).mean(1)
    torch.testing.assert_close(ddr.quality_score(xs), ref_square, atol=1e-5, rtol=0)


def test_nonsquare_policies(bundle):
    torch.manual_seed(6)
    x = torch.rand(1, 3, 48, 100)
    with pytest.raises(ValueError, match="non-square"):
        DDR(clip=bundle, nonsquare="error")(x)
    patches = DDR(clip=bundle, nonsquare="patches")
    torch.testing.assert_close(patches.q(x), patches.quality_score(x), atol=1e-6, rtol=0)
    resize = DDR(clip=bundle, degradations=["blur"])
    squashed = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
    ref = reference_per_type(bundle.model, squashed, ["blur"])
    torch.testing.assert_close(resize.per_type(x), ref, atol=1e-5, rtol=0)
    xg = x.clone().requires_grad_(True)
    resize(xg).backward()
    assert (xg.grad.abs().sum(dim=1) > 0).float().mean() > 0.99  # squashing: (nearly) every pixel gets gradient
    with pytest.raises(ValueError, match="nonsquare"):
        DDR(clip=bundle, nonsquare="crop")


@pytest.mark.parametrize(
    "shape, match",
    [((2, 1, 32, 32), "greyscale"), ((2, 4, 32, 32), "RGBA"), ((3, 32, 32), "unsqueeze"), ((2, 3, 32), "B,3,H,W")],
)
def test_bad_shapes(ddr, shape, match):
    with pytest.raises(ValueError, match=match):
        ddr(torch.rand(*shape))


def test_range_policy(ddr, bundle):
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\[0,1\].*255"):
        ddr(x * 255)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        ddr(x * 2 - 1)
    with pytest.raises(ValueError, match="NaN"):
        ddr(torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(ValueError, match="uint8"):
        ddr((x * 255).to(torch.uint8))
    over = x * 1.3 - 0.1  # training-time overshoot: accepted and not clamped (official behaviour)
    torch.testing.assert_close(ddr.per_type(over), reference_per_type(bundle.model, over, ALL), atol=1e-5, rtol=0)
    clamped = DDR(clip=bundle, clamp=True)
    torch.testing.assert_close(clamped.per_type(over), ddr.per_type(over.clamp(0, 1))[:, :4], atol=1e-6, rtol=0)


def test_unknown_degradation(bundle):
    with pytest.raises(ValueError, match="valid types: color, noise, blur, exposure, content"):
        DDR(clip=bundle, degradations=["blur", "sharpness"])


def test_ddr_loss_through_registry(bundle):
    from ddr_restore.registry import LOSS_REGISTRY

    loss = LOSS_REGISTRY.build({"type": "DDRLoss", "loss_weight": 0.25, "degradations": ["blur", "noise"]}, clip=bundle)
    torch.manual_seed(7)
    pred, gt = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    ref = reference_per_type(bundle.model, pred, ("blur", "noise"))
    torch.testing.assert_close(loss(pred, gt), 0.25 * -ref.mean(), atol=1e-5, rtol=0)
    assert list(loss.parameters()) == []
    assert loss.pretrained_is_random
    with pytest.raises(ValueError, match="loss_weight"):
        LOSS_REGISTRY.build({"type": "DDRLoss", "loss_weight": "big"}, clip=bundle)


# ------------------------------------------------------------------ ddr-score
@pytest.fixture
def photo_dir(tmp_path):
    folder = tmp_path / "photos"
    imgs = {"astronaut.png": skdata.astronaut(), "chelsea.png": skdata.chelsea(), "coffee.png": skdata.coffee()}
    for name, img in imgs.items():
        write_image(folder / name, img)
    return folder, imgs


def test_cli_scores_folder_and_csv(ddr, bundle, photo_dir, monkeypatch, capsys):
    folder, imgs = photo_dir
    # Reuse the fixture CLIP instead of building another one.
    monkeypatch.setattr(descriptor_module, "load_clip", lambda backbone, pretrained, switch_hint=None: bundle)
    out_csv = folder.parent / "scores.csv"
    assert score_main([str(folder), "--csv", str(out_csv), "--pretrained", "none", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "RANDOMLY INITIALISED" in captured.err
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == sorted(imgs)
    types = ("blur", "color", "noise", "exposure")
    assert list(rows[0]) == ["path", "width", "height", "q_ddr"] + [f"ddr_{t}" for t in types] + ["error", "clip_weights"]
    assert {r["clip_weights"] for r in rows} == {"random"}  # the file itself says the scores are not real
    for r in rows:
        img = imgs[r["path"].rsplit("/", 1)[-1]]
        x = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        per = ddr.quality_score(x, per_type=True)[0, :4]  # fixture order: blur, color, noise, exposure, content
        assert (int(r["height"]), int(r["width"])) == img.shape[:2]
        assert float(r["q_ddr"]) == pytest.approx(per.mean().item(), abs=1e-5)
        assert [float(r[f"ddr_{t}"]) for t in types] == pytest.approx(per.tolist(), abs=1e-5)
        assert r["error"] == ""
        assert r["path"].rsplit("/", 1)[-1] in captured.out
    # The three photos get different scores (the table is not constant).
    assert len({round(float(r["q_ddr"]), 6) for r in rows}) == 3


def test_score_bad_files(ddr, photo_dir, monkeypatch, bundle, capsys):
    folder, _ = photo_dir
    cv2.imwrite(str(folder / "grey.png"), skdata.camera())
    rgba = np.concatenate([skdata.astronaut(), np.full((512, 512, 1), 255, np.uint8)], axis=2)
    cv2.imwrite(str(folder / "rgba.png"), rgba)
    (folder / "broken.png").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="broken.png"):
        score_paths([folder], ddr=ddr, progress=False)
    with pytest.raises(ValueError, match="grey.png.*greyscale"):
        score_paths([folder / "grey.png"], ddr=ddr, progress=False)
    with pytest.raises(ValueError, match="rgba.png.*4 channels"):
        score_paths([folder / "rgba.png"], ddr=ddr, progress=False)
    pair = [folder / "grey.png", folder / "rgba.png"]
    rows = score_paths(pair, ddr=ddr, gray="replicate", alpha="drop", progress=False)
    assert all(r["error"] == "" and r["q_ddr"] is not None for r in rows)

    monkeypatch.setattr(descriptor_module, "load_clip", lambda backbone, pretrained, switch_hint=None: bundle)
    with pytest.raises(SystemExit) as exc:
        score_main([str(folder), "--pretrained", "none", "--no-progress"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "3 of 6 file(s)" in err and "broken.png" in err and "grey.png" in err and "rgba.png" in err
    # A refused grey / RGBA file names the ddr-score flag that accepts it (regression: it did not).
    lines = {name: next(line for line in err.splitlines() if f"{name}:" in line) for name in ("grey.png", "rgba.png")}
    assert "--gray replicate" in lines["grey.png"] and "--alpha drop" in lines["rgba.png"]
    assert "Python" not in lines["grey.png"] + lines["rgba.png"]  # the command line's words, not the library's
    with pytest.raises(SystemExit) as exc:
        score_main([str(folder / "missing.png"), "--pretrained", "none"])
    assert exc.value.code == 2 and "missing.png" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        score_main([str(folder), "--degradations", "blur", "haze", "--pretrained", "none"])
    assert "haze" in capsys.readouterr().err
