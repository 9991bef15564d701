"""CLIP backend for DDR: backbone names, weight sources and their precedence, checkpoints, offline failure."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import open_clip
import pytest
import torch

from ddr_restore.ddr.clip_backend import (
    ENV_CHECKPOINT,
    is_torchscript_archive,
    load_checkpoint_into,
    load_clip,
    resolve_backbone,
    resolve_pretrained,
)
from ddr_restore.ddr.descriptor import DDR
from ddr_restore.errors import CheckpointError


pytestmark = pytest.mark.usefixtures("one_thread")  # CLIP tests run single-threaded (conftest)


def tiny_clip(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return open_clip.CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=224, layers=1, width=64, patch_size=32, head_width=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
        quick_gelu=True,
    ).eval()


@pytest.mark.parametrize(
    "name, pretrained, expected",
    [
        ("ViT-B-32", None, "ViT-B-32-quickgelu"),
        ("ViT-B/32", "openai", "ViT-B-32-quickgelu"),
        ("vit-b/32", "none", "ViT-B-32-quickgelu"),
        ("RN50", None, "RN50-quickgelu"),
        ("ViT-B-32-quickgelu", None, "ViT-B-32-quickgelu"),
        ("ViT-B-32", "laion2b_s34b_b79k", "ViT-B-32"),  # a tag trained with standard GELU keeps plain GELU
        ("ViT-B-32", "some/dir/ckpt.pt", "ViT-B-32-quickgelu"),
    ],
)
def test_resolve_backbone(name, pretrained, expected):
    assert resolve_backbone(name, pretrained) == expected


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown CLIP backbone 'ViT-B-33'.*ViT-B-32.*RN50.*Did you mean"):
        resolve_backbone("ViT-B-33")


def test_pretrained_precedence(tmp_path, monkeypatch):
    ckpt = tmp_path / "clip.pt"
    ckpt.write_bytes(b"x")
    monkeypatch.delenv(ENV_CHECKPOINT, raising=False)
    assert resolve_pretrained(None) == "openai"
    monkeypatch.setenv(ENV_CHECKPOINT, str(ckpt))
    assert resolve_pretrained(None) == str(ckpt)  # env var used when pretrained is unset
    assert resolve_pretrained("openai") == "openai"  # an explicit value wins
    assert resolve_pretrained("None") == "none"
    monkeypatch.setenv(ENV_CHECKPOINT, str(tmp_path / "missing.pt"))
    with pytest.raises(FileNotFoundError, match=f"{ENV_CHECKPOINT}.*missing.pt"):
        resolve_pretrained(None)


def test_offline_tag_fails_fast_with_instructions(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    env.pop(ENV_CHECKPOINT, None)
    code = (
        "from ddr_restore.ddr.clip_backend import load_clip\n"
        "from ddr_restore.ddr.clip_backend import ClipWeightsUnavailableError\n"
        "try:\n    load_clip('ViT-B-32', 'openai')\nexcept ClipWeightsUnavailableError as e:\n    print('ERR', e)\n"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert elapsed < 30, f"offline tag took {elapsed:.1f}s"
    out = proc.stdout
    assert out.startswith("ERR"), proc.stdout + proc.stderr
    assert "HF_HUB_OFFLINE" in out and ENV_CHECKPOINT in out and "pretrained='/path/to/" in out and "ViT-B-32.pt" in out


def test_unknown_tag_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not one of its open_clip tags: openai"):
        load_clip("ViT-B-32", "openia")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_clip("ViT-B-32", str(tmp_path / "nope.pt"))


def test_state_dict_round_trip_and_env_var(tmp_path, monkeypatch):
    torch.manual_seed(11)
    original = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    path = tmp_path / "vitb32_random.pt"
    try:
        torch.save(original.state_dict(), path)
        loaded = load_clip("ViT-B-32", str(path))
        assert loaded.source == f"file:{path}" and not loaded.is_random
        for key, value in original.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[key], value), key
        x = torch.rand(1, 3, 64, 64)
        from ddr_restore.ddr.clip_backend import ClipBundle, freeze

        ref = DDR(clip=ClipBundle(freeze(original), loaded.tokenizer, "ref", "x", False, 224, loaded.mean, loaded.std))
        assert torch.equal(DDR(clip=loaded).per_type(x), ref.per_type(x))
        del loaded
        monkeypatch.setenv(ENV_CHECKPOINT, str(path))
        via_env = DDR(degradations="blur")  # pretrained unset -> the env var's file
        assert via_env.source == f"file:{path}" and via_env.pretrained_is_random is False
        torch.testing.assert_close(via_env.per_type(x), ref.per_type(x)[:, :1], atol=1e-6, rtol=0)
    finally:
        path.unlink(missing_ok=True)  # 600 MB: do not leave it in pytest's kept tmp dirs


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_archive(tmp_path):
    src = tiny_clip(1)
    src.register_buffer("input_resolution", torch.tensor(224))  # extra entries like OpenAI's archives carry
    archive = tmp_path / "tiny_jit.pt"
    torch.jit.script(src).save(str(archive))
    plain = tmp_path / "tiny_sd.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in tiny_clip(1).state_dict().items()}}, plain)
    assert is_torchscript_archive(archive) and not is_torchscript_archive(plain)
    x = torch.rand(2, 3, 224, 224)
    expected = tiny_clip(1).encode_image(x)
    for ckpt in (archive, plain):
        target = tiny_clip(2)
        assert not torch.allclose(target.encode_image(x), expected)
        load_checkpoint_into(target, ckpt, "tiny")
        torch.testing.assert_close(target.encode_image(x), expected, atol=0, rtol=0)


def test_bad_checkpoints(tmp_path):
    wrong = tmp_path / "tiny.pt"
    torch.save(tiny_clip(1).state_dict(), wrong)
    with pytest.raises(ValueError, match=r"tiny.pt into backbone ViT-B-32-quickgelu"):
        load_clip("ViT-B-32", str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_checkpoint_into(tiny_clip(1), garbage)
    damaged = tmp_path / "damaged.safetensors"  # the safetensors reader's own error type is caught too
    damaged.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="damaged.safetensors"):
        load_checkpoint_into(tiny_clip(1), damaged)
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": _Unsafe()}, evil)
    with pytest.raises(ValueError, match="evil.pt"):  # weights_only=True refuses arbitrary objects
        load_checkpoint_into(tiny_clip(1), evil)


class _Unsafe:
    pass


def test_random_clip_is_seeded_and_leaves_the_global_rng_alone():
    """pretrained='none' gives the same weights whatever the caller's RNG state, and does not consume it."""
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    first = load_clip("ViT-B-32", "none")
    assert torch.equal(torch.rand(4), expected_next)  # the caller's random stream is where it was
    torch.manual_seed(999)
    second = load_clip("ViT-B-32", "none")
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
