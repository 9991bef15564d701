"""ddr-eval command line: results folders are archived or replaced, never mixed; every user error is one line and
exit status 2; --set / --version / --debug / --gray / --alpha (ddr_restore.eval.entry.main)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import ddr_restore
from ddr_restore.eval.entry import main

TINY_NAFNET = {"type": "NAFNet", "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1]}
H, W = 40, 56
NO_EXTRAS = ["--no-lpips", "--no-ddr", "--no-progress"]


def _save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


@pytest.fixture
def pairs(tmp_path):
    """Three pairs of small random images (input, target) and a 'restored' folder."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for name in ("a", "b", "c"):
        gt = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        noisy = np.clip(gt.astype(np.int16) + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
        _save(data / "target" / f"{name}.png", gt)
        _save(data / "input" / f"{name}.png", noisy)
        _save(data / "restored" / f"{name}.png", cv2.GaussianBlur(gt, (3, 3), 0.5))
    return data


def _restored_args(data: Path, out: Path, *extra: str):
    return ["--preset", "folder", "--target-dir", str(data / "target"), "--restored", str(data / "restored"),
            "--out", str(out), *NO_EXTRAS, *extra]


def _user_error(capsys, argv) -> str:
    """Run ddr-eval expecting a user error; returns stderr after checking the exit status and one-line form."""
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("ddr-eval: error: "), stderr
    return stderr


def _rows(out: Path):
    with open(out / "per_image.csv", newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------- item 3


def test_existing_results_are_archived_never_mixed(pairs, tmp_path, capsys):
    out = tmp_path / "results" / "run"
    main(_restored_args(pairs, out, "--grid", "2", "--save-images"))
    first = json.loads((out / "summary.json").read_text())
    assert (out / "grid").is_dir() and (out / "images").is_dir()
    capsys.readouterr()

    summary = main(_restored_args(pairs, out, "--max-images", "1"))
    stderr = capsys.readouterr().err
    archives = sorted(out.parent.glob("run_archived_*"))
    assert len(archives) == 1
    assert str(archives[0]) in stderr
    # the new folder holds only the new run; the archive holds the whole old one
    assert sorted(p.name for p in out.iterdir()) == ["per_image.csv", "summary.json"]
    assert len(_rows(out)) == 1
    assert json.loads((archives[0] / "summary.json").read_text()) == first
    assert len(list((archives[0] / "grid").glob("*.png"))) == 2
    assert len(list((archives[0] / "images").glob("*.png"))) == 3
    assert summary["previous_results"] == {"action": "archived", "folder": str(out), "moved_to": str(archives[0])}

    # twice more within (very likely) the same second: each gets its own archive, none is overwritten
    main(_restored_args(pairs, out, "--max-images", "2"))
    main(_restored_args(pairs, out, "--max-images", "3"))
    archives = sorted(out.parent.glob("run_archived_*"))
    assert len(archives) == 3
    assert sorted(len(_rows(a)) for a in archives) == [1, 2, 3]
    assert len(_rows(out)) == 3


def test_overwrite_replaces_old_results(pairs, tmp_path, capsys):
    out = tmp_path / "run"
    main(_restored_args(pairs, out, "--grid", "3", "--save-images"))
    capsys.readouterr()
    summary = main(_restored_args(pairs, out, "--overwrite", "--max-images", "2"))
    assert "--overwrite" in capsys.readouterr().err
    assert not list(tmp_path.glob("run_archived_*"))
    assert sorted(p.name for p in out.iterdir()) == ["per_image.csv", "summary.json"]  # no stale images/, grid/
    assert len(_rows(out)) == 2 and summary["previous_results"]["action"] == "replaced"


def test_results_folder_refusals(pairs, tmp_path, capsys):
    # a folder holding other files is neither moved nor emptied
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        stderr = _user_error(capsys, _restored_args(pairs, mine, *extra))
        assert "notes.txt" in stderr and "--out" in stderr
        assert (mine / "notes.txt").read_text() == "keep me" and not list(tmp_path.glob("mine_archived_*"))
    # an empty folder is simply used
    empty = tmp_path / "empty"
    empty.mkdir()
    main(_restored_args(pairs, empty))
    assert json.loads((empty / "summary.json").read_text())["previous_results"] is None
    assert not list(tmp_path.glob("empty_archived_*"))
    # scoring outputs that live inside the folder to be archived would take them away
    out = tmp_path / "old"
    main(_restored_args(pairs, out, "--save-images"))
    capsys.readouterr()
    argv = ["--preset", "folder", "--target-dir", str(pairs / "target"), "--restored", str(out / "images"),
            "--out", str(out), *NO_EXTRAS]
    assert "--out" in _user_error(capsys, argv)
    assert len(list((out / "images").glob("*.png"))) == 3


def test_help_describes_archiving_and_new_flags(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--help"])
    assert err.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("_archived_", "--overwrite", "--set", "--alpha", "--gray", "--debug", "--version"):
        assert needle in text, needle


# ----------------------------------------------------------------------------------------------- item 5


def _checkpoint(tmp_path: Path, width: int) -> tuple:
    from ddr_restore.registry import ARCH_REGISTRY

    torch.manual_seed(0)
    state = ARCH_REGISTRY.build({**TINY_NAFNET, "width": width}).state_dict()
    path = tmp_path / "experiments" / "tiny" / "models" / f"net_g_w{width}.pth"
    path.parent.mkdir(parents=True)
    torch.save({"params": state}, path)
    return path, state


def _model_args(data: Path, opt: Path, ckpt: Path, out: Path, *extra: str):
    return ["--preset", "folder", "--input-dir", str(data / "input"), "--target-dir", str(data / "target"),
            "-opt", str(opt), "--checkpoint", str(ckpt), "--out", str(out), *NO_EXTRAS, *extra]


def test_width_mismatch_is_one_short_paragraph(pairs, tmp_path, capsys):
    ckpt, small = _checkpoint(tmp_path, 8)
    opt = tmp_path / "nafnet_w32.yml"
    opt.write_text(yaml.safe_dump({"name": "w32", "network_g": {**TINY_NAFNET, "width": 32}}))
    stderr = _user_error(capsys, _model_args(pairs, opt, ckpt, tmp_path / "o"))
    assert len(stderr.strip().splitlines()) < 15, stderr
    assert str(opt) in stderr and str(ckpt) in stderr
    from ddr_restore.registry import ARCH_REGISTRY

    big = ARCH_REGISTRY.build({**TINY_NAFNET, "width": 32}).state_dict()
    named = [k for k in small if small[k].shape != big[k].shape and k in stderr]
    assert named, stderr
    shapes = (small[named[0]].shape, big[named[0]].shape)
    assert all(str(list(s)) in stderr or str(tuple(s)) in stderr for s in shapes), (named[0], shapes, stderr)
    assert not (tmp_path / "o").exists()

    # --set fixes it, like train.py --set: the width-8 checkpoint loads into the width-8 network
    summary = main(_model_args(pairs, opt, ckpt, tmp_path / "o", "--set", "network_g.width=8"))
    assert summary["network"]["network_g"]["width"] == 8 and summary["overrides"] == ["network_g.width=8"]
    assert summary["num_images"] == 3


def test_random_bytes_checkpoint(pairs, tmp_path, capsys):
    opt = tmp_path / "opt.yml"
    opt.write_text(yaml.safe_dump({"network_g": TINY_NAFNET}))
    ckpt = tmp_path / "random.pth"
    ckpt.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    stderr = _user_error(capsys, _model_args(pairs, opt, ckpt, tmp_path / "o"))
    assert "weights_only" not in stderr and str(ckpt) in stderr
    assert len(stderr.strip().splitlines()) < 15


# ----------------------------------------------------------------------------------------------- item 7


def test_user_errors_are_one_line_exit_2(pairs, tmp_path, capsys):
    out = str(tmp_path / "o")
    ok_opt = tmp_path / "opt.yml"
    ok_opt.write_text(yaml.safe_dump({"network_g": TINY_NAFNET}))
    ckpt, _ = _checkpoint(tmp_path, 8)
    (pairs / "extra").mkdir()
    _save(pairs / "extra" / "a.png", np.zeros((H, W, 3), np.uint8))
    _save(pairs / "extra" / "orphan.png", np.zeros((H, W, 3), np.uint8))
    _save(pairs / "small" / "a.png", np.zeros((H, W + 8, 3), np.uint8))
    unknown_arch = tmp_path / "unknown.yml"
    unknown_arch.write_text(yaml.safe_dump({"network_g": {"type": "NoSuchNet"}}))
    typo = tmp_path / "typo.yml"
    typo.write_text(yaml.safe_dump({"network_g": {**TINY_NAFNET, "widht": 8}}))

    def model(opt: Path, *extra: str):
        return _model_args(pairs, opt, ckpt, tmp_path / "o", *extra)

    cases = {
        "absent": ["--preset", "folder", "--target-dir", str(tmp_path / "absent"), "--restored",
                   str(pairs / "restored"), "--out", out],
        "orphan": ["--preset", "folder", "--input-dir", str(pairs / "extra"), "--target-dir", str(pairs / "target"),
                   "-opt", str(ok_opt), "--checkpoint", str(ckpt), "--out", out],
        "small/a.png": ["--preset", "folder", "--target-dir", str(pairs / "target"), "--restored",
                        str(pairs / "small"), "--max-images", "1", "--out", out],
        "NoSuchNet": ["--preset", "folder", "--input-dir", str(pairs / "input"), "--target-dir",
                      str(pairs / "target"), "-opt", str(unknown_arch), "--checkpoint", str(ckpt), "--out", out],
        "missing.pth": ["--preset", "folder", "--input-dir", str(pairs / "input"), "--target-dir",
                        str(pairs / "target"), "-opt", str(ok_opt), "--checkpoint", str(tmp_path / "missing.pth"),
                        "--out", out],
        "gpu9": _restored_args(pairs, tmp_path / "o", "--device", "gpu9"),
        "widht": model(typo),  # a keyword the arch does not take (a TypeError inside the registry)
        "network_g.width=[8": model(ok_opt, "--set", "network_g.width=[8"),  # bad YAML in --set
        "not-a-dir": ["--preset", "gopro", "--root", str(tmp_path / "not-a-dir"), "--restored",
                      str(pairs / "restored"), "--out", out],
    }
    if not torch.cuda.is_available():
        cases["CUDA is not available"] = model(ok_opt, "--device", "cuda")
    for needle, argv in cases.items():
        stderr = _user_error(capsys, argv + NO_EXTRAS)
        assert needle in stderr, (needle, stderr)
        assert len(stderr.strip().splitlines()) == 1, stderr


def test_debug_adds_the_traceback(pairs, tmp_path, capsys):
    argv = ["--preset", "folder", "--target-dir", str(tmp_path / "absent"), "--restored", str(pairs / "restored"),
            "--out", str(tmp_path / "o"), *NO_EXTRAS, "--debug"]
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" in stderr and "ddr-eval: error: " in stderr and "absent" in stderr


# ----------------------------------------------------------------------------------------------- item 10


def test_version(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--version"])
    assert err.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("ddr-eval") and out.endswith(ddr_restore.__version__)


def test_console_script_version_and_set_needs_opt(tmp_path, capsys):
    """The console-script function (ddr_restore.cli) gives the same --version; --set without -opt is a usage error."""
    from ddr_restore.cli import eval_main

    with pytest.raises(SystemExit) as err:
        eval_main(["--version"])
    assert err.value.code == 0 and ddr_restore.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        eval_main(["--restored", str(tmp_path), "--target-dir", str(tmp_path), "--set", "network_g.width=8"])
    stderr = capsys.readouterr().err
    assert err.value.code == 2 and "--set" in stderr and "-opt" in stderr


def test_rgba_and_grey_refused_unless_asked(pairs, tmp_path, capsys):
    """As in training and ddr-score, RGBA and grey files stop the run; --alpha drop / --gray replicate allow them."""
    rgb = cv2.imread(str(pairs / "restored" / "b.png"), cv2.IMREAD_UNCHANGED)
    rgba = pairs / "rgba"
    for name in ("a", "c"):
        _save(rgba / f"{name}.png", cv2.imread(str(pairs / "restored" / f"{name}.png"), cv2.IMREAD_UNCHANGED))
    alpha = np.random.default_rng(2).integers(0, 256, (H, W, 1), dtype=np.uint8)  # alpha must not matter
    _save(rgba / "b.png", np.concatenate([rgb, alpha], axis=2))
    argv = ["--preset", "folder", "--target-dir", str(pairs / "target"), "--restored", str(rgba), *NO_EXTRAS]
    stderr = _user_error(capsys, argv + ["--out", str(tmp_path / "x")])
    assert "b.png" in stderr and "--alpha drop" in stderr
    dropped = main(argv + ["--out", str(tmp_path / "dropped"), "--alpha", "drop"])
    plain = main(_restored_args(pairs, tmp_path / "plain"))
    assert dropped["mean"] == plain["mean"]
    assert [r["psnr"] for r in _rows(tmp_path / "dropped")] == [r["psnr"] for r in _rows(tmp_path / "plain")]

    grey = cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY)
    grey_dir = pairs / "grey"
    _save(grey_dir / "target" / "g.png", grey)
    _save(grey_dir / "restored" / "g.png", grey)
    argv = ["--preset", "folder", "--target-dir", str(grey_dir / "target"), "--restored", str(grey_dir / "restored"),
            *NO_EXTRAS]
    stderr = _user_error(capsys, argv + ["--out", str(tmp_path / "y")])
    assert "g.png" in stderr and "--gray replicate" in stderr
    summary = main(argv + ["--out", str(tmp_path / "g"), "--gray", "replicate"])
    assert summary["mean"]["psnr"] == float("inf") or summary["mean"]["psnr"] > 90  # identical images
