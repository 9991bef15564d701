"""CLIP weights without a network: fail within seconds, name the caller's switch, use cached files first.

The subprocess tests leave HF_HUB_OFFLINE unset (what a new user has) and point HF_ENDPOINT at a closed local port, so
huggingface_hub would otherwise spend ~50 s in retries before giving up.
"""
from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ddr_restore.ddr import clip_backend
from ddr_restore.ddr.clip_backend import ENV_CHECKPOINT, ClipWeightsUnavailableError, load_clip, probe_endpoint
from ddr_restore.errors import CheckpointError, InputError, UserError

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _closed_port() -> int:
    """A local TCP port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_network_env(tmp_path: Path) -> dict:
    """HF_HUB_OFFLINE unset, an empty hub cache, the hub at a closed local port, no proxies, no checkpoint env var."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
               OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(tmp_path / "cache"), HOME=str(tmp_path / "home"))
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", ENV_CHECKPOINT):
        env.pop(key, None)
    for key in PROXY_VARS:
        env.pop(key, None)
        env.pop(key.upper(), None)
    return env


def _assert_actionable(message: str, switch_usage: str) -> None:
    assert switch_usage in message, message
    assert ENV_CHECKPOINT in message and "none" in message, message
    assert message.rstrip().endswith("."), f"message cut off: ...{message[-80:]!r}"
    assert "Retrying" not in message


def test_ddr_fails_within_seconds_without_hf_hub_offline(tmp_path):
    code = (  # open_clip is imported before the clock starts: its import time depends on the machine's load
        "import time\n"
        "import open_clip\n"
        "from ddr_restore import DDR\n"
        "from ddr_restore.ddr.clip_backend import ClipWeightsUnavailableError\n"
        "start = time.monotonic()\n"
        "try:\n    DDR()\nexcept ClipWeightsUnavailableError as err:\n"
        "    print(f'{time.monotonic() - start:.2f}'); print(err)\n"
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=_no_network_env(tmp_path), capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    wall = time.monotonic() - start
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 2, proc.stdout + proc.stderr
    assert float(lines[0]) < 5, f"DDR() took {lines[0]} s to fail"  # was ~50 s of hub retries (their sleeps: 46 s)
    assert wall < 40, f"whole process took {wall:.1f}s"
    _assert_actionable(lines[1], "DDR(pretrained='/path/to/ViT-B-32.pt')")
    assert "127.0.0.1" in lines[1] and "cannot be reached" in lines[1]
    assert "Retrying" not in proc.stderr


def test_ddr_score_fails_in_one_line_naming_its_flag(tmp_path):
    from skimage import data as skdata

    from ddr_restore.imageio import write_image

    image = write_image(tmp_path / "photo.png", skdata.astronaut()[:64, :64])
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "from ddr_restore.cli import score_main; score_main()", str(image),
                           "--pretrained", "openai", "--no-progress"],
                          env=_no_network_env(tmp_path), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    wall = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert wall < 40, f"ddr-score took {wall:.1f}s to fail"  # hub retries alone sleep 46 s
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ddr-score: error: cannot obtain CLIP weights"), proc.stderr
    _assert_actionable(errors[0], "--pretrained /path/to/ViT-B-32.pt")
    assert "--pretrained none" in errors[0] and "DDR(" not in errors[0]


@pytest.mark.parametrize(
    "switch, usage",
    [
        (None, "DDR(pretrained='/path/to/ViT-B-32.pt')"),
        ("--ddr-pretrained", "--ddr-pretrained /path/to/ViT-B-32.pt"),
        ("train.ddr_opt.pretrained", "train.ddr_opt.pretrained: /path/to/ViT-B-32.pt in the option file"),
    ],
)
def test_error_names_the_switch(switch, usage):
    base = ClipWeightsUnavailableError("ViT-B-32-quickgelu", "openai", "some reason")
    err = base.with_switch(switch)
    message = str(err)
    _assert_actionable(message, usage)
    assert isinstance(err, InputError) and isinstance(err, UserError) and isinstance(err, RuntimeError)
    assert str(pickle.loads(pickle.dumps(err))) == message  # crosses process boundaries intact
    if switch:
        assert f"{switch} none" in message or f"{switch}: none" in message


def test_ddr_loss_names_its_option_key():
    # conftest sets HF_HUB_OFFLINE=1: the quickest way to an unavailable tag; the message must speak option-file.
    from ddr_restore.registry import LOSS_REGISTRY

    with pytest.raises(ClipWeightsUnavailableError) as info:
        LOSS_REGISTRY.build({"type": "DDRLoss", "pretrained": "openai"}, where="train.ddr_opt")
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message
    _assert_actionable(message, "train.ddr_opt.pretrained: /path/to/ViT-B-32.pt")
    assert "--set train.ddr_opt.pretrained=none" in message


def test_cached_weights_are_used_before_any_probe(tmp_path, monkeypatch):
    """A tag whose file is in the hub cache is loaded from there, with no probe and no download."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"not really weights")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(clip_backend, "_hub_offline", lambda: False)

    def no_probe(*args, **kwargs):
        raise AssertionError("the hub was probed although the weights are cached")

    monkeypatch.setattr(clip_backend, "probe_endpoint", no_probe)
    # The fake file reaches the checkpoint loader: proof that the cache was read; its error names the file.
    with pytest.raises(CheckpointError, match="open_clip_model.safetensors"):
        load_clip("ViT-B-32", "openai")


def test_probe_is_bounded_even_when_connect_hangs(monkeypatch):
    release = threading.Event()

    def hang(*args, **kwargs):  # a black-holed address or a DNS server that never answers
        release.wait(30)
        raise OSError("late")

    monkeypatch.setattr(clip_backend.socket, "create_connection", hang)
    start = time.monotonic()
    problem = probe_endpoint("https://hub.example", timeout=0.3)
    elapsed = time.monotonic() - start
    release.set()
    assert problem == "hub.example:443: no answer within 0.3 s" and elapsed < 2


def test_probe_follows_proxy_settings(monkeypatch):
    for key in PROXY_VARS:
        monkeypatch.delenv(key, raising=False)
        monkeypatch.delenv(key.upper(), raising=False)
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen(4)
        port = proxy.getsockname()[1]
        # The hub host does not resolve; the proxy in front of it does: the proxy is what must answer.
        assert probe_endpoint("https://no-such-host.invalid", timeout=2) is not None
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
        assert probe_endpoint("https://no-such-host.invalid", timeout=2) is None
        monkeypatch.setenv("no_proxy", "no-such-host.invalid")
        assert probe_endpoint("https://no-such-host.invalid", timeout=2) is not None
    closed = _closed_port()
    assert "Connection refused" in (probe_endpoint(f"http://127.0.0.1:{closed}", timeout=2) or "")


def test_ddr_eval_fails_in_one_line_naming_its_flag(tmp_path):
    from skimage import data as skdata

    from ddr_restore.imageio import write_image

    for sub in ("restored", "target"):
        write_image(tmp_path / sub / "a.png", skdata.astronaut()[:64, :64])
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "from ddr_restore.cli import eval_main; eval_main()",
                           "--preset", "folder", "--restored", str(tmp_path / "restored"),
                           "--target-dir", str(tmp_path / "target"), "--metrics", "psnr", "q_ddr",
                           "--ddr-pretrained", "openai", "--out", str(tmp_path / "res")],
                          env=_no_network_env(tmp_path), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    wall = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert wall < 40, f"ddr-eval took {wall:.1f}s to fail"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ddr-eval: error:")]
    assert len(errors) == 1, proc.stderr
    _assert_actionable(errors[0], "--ddr-pretrained /path/to/ViT-B-32.pt")
    assert "DDR(" not in errors[0]


def test_train_fails_in_one_line_naming_the_option_key(tmp_path):
    demo = Path(__file__).resolve().parents[1] / "options" / "demo" / "nafnet_ddr_demo.yml"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "from ddr_restore.cli import train_main; train_main()",
                           "-opt", str(demo), "--set", "train.total_iter=1", "--set", "train.ddr_opt.pretrained=openai",
                           "--set", f"path.experiments_root={tmp_path / 'exp'}"],
                          env=_no_network_env(tmp_path), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    wall = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert wall < 60, f"train.py took {wall:.1f}s to fail"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ddr-train: error:")]
    assert len(errors) == 1, proc.stderr
    _assert_actionable(errors[0], "train.ddr_opt.pretrained: /path/to/ViT-B-32.pt")
    assert not (tmp_path / "exp").exists() or not any((tmp_path / "exp").rglob("*.pth"))
