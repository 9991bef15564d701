"""ddr-ablate: grid parsing, cell planning, reports, skip/resume of finished and interrupted cells."""
from __future__ import annotations

import csv
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from ddr_restore.ablate import load_grid_file, load_spec, run_ablation
from ddr_restore.ablate.grid import Axis, Cell, expand_cells, parse_grid_arg, parse_seeds
from ddr_restore.ablate.report import markdown_table, metric_direction, summarize
from ddr_restore.ablate.runner import cell_options, plan_cells, read_done, resolve_test
from ddr_restore.errors import InputError

REPO = Path(__file__).resolve().parents[1]
GRID = ["train.losses.aux.loss_weight=0,0.5"]


# ------------------------------------------------------------------------------------------------------- helpers
def _write_pairs(folder: Path, n: int, size: int, seed: int) -> None:
    from ddr_restore.imageio import write_image

    rng = np.random.default_rng(seed)
    for i in range(n):
        gt = rng.random((size, size, 3)).astype(np.float32)
        lq = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1)
        write_image(folder / "target" / f"{i:03d}.png", gt)
        write_image(folder / "input" / f"{i:03d}.png", lq)


def _base(tmp: Path, total_iter: int = 2) -> Path:
    """A tiny NAFNet (width 4) on generated 32 px pairs; two loss terms so that a weight can be swept."""
    _write_pairs(tmp / "data" / "train", 4, 32, 0)
    _write_pairs(tmp / "data" / "val", 2, 32, 1)
    opt = {
        "name": "tiny",
        "num_gpu": 0,
        "manual_seed": 1,
        "datasets": {
            "train": {"type": "PairedImageDataset", "dataroot_lq": str(tmp / "data/train/input"),
                      "dataroot_gt": str(tmp / "data/train/target"), "gt_size": 16, "batch_size_per_gpu": 2},
            "val": {"type": "PairedImageDataset", "dataroot_lq": str(tmp / "data/val/input"),
                    "dataroot_gt": str(tmp / "data/val/target")},
        },
        "network_g": {"type": "NAFNet", "width": 4, "enc_blk_nums": [1], "middle_blk_num": 1, "dec_blk_nums": [1]},
        "train": {
            "optim_g": {"type": "AdamW", "lr": 1e-3},
            "total_iter": total_iter,
            "losses": {"pix": {"type": "L1Loss", "loss_weight": 1.0},
                       "aux": {"type": "PSNRLoss", "loss_weight": 0.0}},
        },
        "logger": {"print_freq": 1, "save_checkpoint_freq": 1, "use_tb_logger": False},
    }
    path = tmp / "base.yml"
    path.write_text(yaml.safe_dump(opt))
    return path


def _spec(base: Path, metrics=("psnr", "ssim"), **kw):
    spec = load_spec(base=base, grid=kw.pop("grid", GRID), seeds=kw.pop("seeds", "0,1"), **kw)
    spec.metrics = list(metrics)
    return spec


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------------------- parsing
def test_grid_values_are_typed_by_yaml():
    axis = parse_grid_arg("train.losses.ddr.loss_weight=0,0.01,1e-3,true,~,{type: L1Loss},vgg")
    assert axis.key == "train.losses.ddr.loss_weight"
    assert axis.values == (0, 0.01, 0.001, True, None, {"type": "L1Loss"}, "vgg")
    assert [type(v) for v in axis.values] == [int, float, float, bool, type(None), dict, str]
    assert not axis.numeric and parse_grid_arg("a.b=0,0.5,2").numeric


@pytest.mark.parametrize("text, needle", [
    ("train.total_iter", "expected KEY.PATH=v1,v2"),
    ("train..total_iter=1,2", "'train..total_iter'"),
    ("train.total iter=1", "'train.total iter'"),
    ("train.total_iter=", "non-empty list"),
    ("train.total_iter=1,1", "listed twice"),
])
def test_bad_grid_arguments_are_input_errors(text, needle):
    with pytest.raises(InputError, match=re.escape(needle)):
        parse_grid_arg(text)


def test_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds([3]) == [3] and parse_seeds(None) == [0]
    for bad in ("-1", "0,0", "a", "1.5", "true"):
        with pytest.raises(InputError, match="--seeds"):
            parse_seeds(bad)


def test_cells_are_the_product_of_axes_times_seeds(tmp_path):
    base = _base(tmp_path)
    spec = load_spec(base=base, grid=["train.losses.aux.loss_weight=0,0.5", "train.optim_g.lr=1e-3,2e-3"],
                     seeds="0,1", overrides=["train.total_iter=3"])
    spec.common = [("logger.print_freq", 5)]
    cells = expand_cells(spec)
    assert len(cells) == 8 and len({c.name for c in cells}) == 8
    assert [c.seed for c in cells[:2]] == [0, 1] and cells[0].group == cells[1].group  # seeds innermost
    assert cells[0].name == "aux.loss_weight-0_optim_g.lr-0.001_seed0"
    # file 'set' first, then the axis values, then the command line's --set
    assert [k for k, _ in cells[-1].overrides] == ["logger.print_freq", "train.losses.aux.loss_weight",
                                                    "train.optim_g.lr", "train.total_iter"]
    assert dict(cells[-1].overrides)["train.optim_g.lr"] == 0.002


def test_grid_file_variants_and_errors(tmp_path):
    base = _base(tmp_path)
    grid = tmp_path / "g.yml"
    grid.write_text(yaml.safe_dump({
        "base": "base.yml", "seeds": [0, 2], "variant_label": "loss",
        "set": {"train.total_iter": 3},
        "variants": {"l1": {}, "l1+psnr": {"train.losses.psnr": {"type": "PSNRLoss", "loss_weight": 0.1}}},
        "metrics": ["psnr"],
    }, sort_keys=False))
    spec = load_grid_file(grid)
    assert spec.base == base and spec.seeds == [0, 2] and spec.name == "g" and spec.metrics == ["psnr"]
    (axis,) = spec.axes
    assert axis.is_variant and axis.label == "loss" and axis.values == ("l1", "l1+psnr")
    cells = expand_cells(spec)
    assert [c.name for c in cells] == ["l1_seed0", "l1_seed2", "l1+psnr_seed0", "l1+psnr_seed2"]
    opt = cell_options(spec, cells[-1], yaml.safe_load(base.read_text()), tmp_path / "out")
    assert opt["train"]["losses"]["psnr"]["loss_weight"] == 0.1 and opt["train"]["total_iter"] == 3
    assert opt["manual_seed"] == 2 and opt["name"] == "l1+psnr_seed2"

    grid.write_text(yaml.safe_dump({"base": "base.yml", "seed": [0]}))
    with pytest.raises(InputError, match=r"g\.yml: unknown key\(s\) seed"):
        load_grid_file(grid)


def test_bad_grid_keys_name_the_key(tmp_path):
    base = _base(tmp_path)
    base_opt = yaml.safe_load(base.read_text())
    # a term the base does not have: the message names the key and lists the terms there are
    spec = _spec(base, grid=["train.losses.ddr.loss_weight=0,0.1"])
    with pytest.raises(InputError) as err:
        cell_options(spec, spec.cells()[0], base_opt, tmp_path / "out")
    assert "train.losses.ddr.loss_weight" in str(err.value) and "no train.losses.ddr" in str(err.value)
    assert "pix (train.losses.pix)" in str(err.value)
    # a leaf the loss class does not accept: the options schema names it
    spec = _spec(base, grid=["train.losses.pix.loss_weigth=1,2"])
    with pytest.raises(InputError, match=r"train\.losses\.pix\.loss_weigth: unknown key for L1Loss"):
        cell_options(spec, spec.cells()[0], base_opt, tmp_path / "out")
    spec = _spec(base, grid=["train.total_iterr=1,2"])
    with pytest.raises(InputError, match=r"train\.total_iterr: unknown key"):
        cell_options(spec, spec.cells()[0], base_opt, tmp_path / "out")
    with pytest.raises(InputError, match="unknown metric"):
        resolve_test(None, base_opt, tmp_path / "out", metrics=["psnr", "fid"])


def test_test_set_specs(tmp_path, monkeypatch):
    from ddr_restore.ablate.entry import parse_test_set

    base = _base(tmp_path)
    base_opt = yaml.safe_load(base.read_text())
    monkeypatch.chdir(tmp_path)
    assert parse_test_set("val") == {"dataset": "val"}
    assert parse_test_set("gopro:datasets/GoPro") == {"preset": "gopro", "root": "datasets/GoPro"}
    with pytest.raises(InputError, match="--test-set"):
        parse_test_set("realblur:x")
    ev = resolve_test({"preset": "folder", "root": "data/val", "metric_options": {"crop_border": 2}}, base_opt,
                      tmp_path / "out", ["psnr"])
    assert ev == {"test": {"preset": "folder", "root": str(tmp_path / "data" / "val")},
                  "eval": {"metric_options": {"crop_border": 2}}, "metrics": ["psnr"]}
    with pytest.raises(InputError, match="test: roots"):
        resolve_test({"preset": "folder", "roots": "x"}, base_opt, tmp_path / "out")
    with pytest.raises(InputError, match="no datasets.val_2"):
        resolve_test({"dataset": "val_2"}, base_opt, tmp_path / "out")
    # the default: the base options' datasets.val, written once as PNG pairs
    ev = resolve_test(None, base_opt, tmp_path / "out", ["psnr"])
    written = sorted(p.name for p in (tmp_path / "out" / "test_set" / "target").iterdir())
    assert written == ["000.png", "001.png"] and ev["test"]["preset"] == "folder"


def test_console_script_version(capsys):
    from ddr_restore.cli import ablate_main, version_text

    with pytest.raises(SystemExit) as stop:
        ablate_main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == version_text("ddr-ablate")


def test_cli_user_error_is_one_line(tmp_path, capsys):
    from ddr_restore.ablate.entry import main

    base = _base(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["-opt", str(base), "--grid", "train.losses.nope.loss_weight=1,2", "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddr-ablate: error: ") and "train.losses.nope" in err[0]


# ------------------------------------------------------------------------------------------------------- reports
def test_summary_mean_std_and_best_follow_metric_direction():
    axes = [Axis(key="k", values=(1, 2), label="k")]
    cells = [Cell(name=f"g{v}_seed{s}", group=f"g{v}", seed=s, values={"k": v}, overrides=()) for v in (1, 2)
             for s in (0, 1, 2)]
    psnr = {"g1": [30.0, 31.0, 32.5], "g2": [29.0, 30.0, 30.5]}
    lpips = {"g1": [0.30, 0.32, 0.31], "g2": [0.20, 0.25, 0.22]}
    rows = [{"cell": c.name, "group": c.group, "psnr": psnr[c.group][c.seed], "lpips": lpips[c.group][c.seed]}
            for c in cells]
    stats = summarize(rows, axes, ["psnr", "lpips"], cells)
    assert [s.n for s in stats] == [3, 3]
    assert stats[0].mean["psnr"] == pytest.approx(statistics.mean(psnr["g1"]))
    assert stats[0].std["psnr"] == pytest.approx(statistics.stdev(psnr["g1"]))  # sample std (n - 1)
    assert metric_direction("psnr") == "higher" and metric_direction("lpips") == "lower"
    table = markdown_table(stats, axes, ["psnr", "lpips"]).splitlines()
    assert re.fullmatch(r"\| k \| PSNR[^|]* ↑ \| LPIPS[^|]* ↓ \| seeds \| notes \|", table[0]), table[0]
    g1, g2 = table[2].split(" | "), table[3].split(" | ")
    assert g1[1].startswith("**") and not g2[1].startswith("**")  # higher PSNR is better: g1
    assert g2[2].startswith("**") and not g1[2].startswith("**")  # lower LPIPS is better: g2
    one = summarize(rows[:1], axes, ["psnr"], cells)  # a single seed: no std, no "±"
    assert math.isnan(one[0].std["psnr"]) and "±" not in markdown_table(one, axes, ["psnr"]).splitlines()[2]


# --------------------------------------------------------------------------------------------- runs (inline)
def test_tiny_grid_writes_reports_then_skips_and_finishes_only_what_is_missing(tmp_path):
    base = _base(tmp_path)
    out = tmp_path / "abl"
    lines: list = []
    spec = _spec(base)
    result = run_ablation(spec, out_dir=out, launcher="inline", echo=lines.append)
    names = [c.name for c in spec.cells()]
    assert sorted(result.ran) == sorted(names) and not result.skipped and not result.failed
    assert "[cell 1/4] aux.loss_weight-0 (seed 0) — 3 left" in lines
    assert "[cell 4/4] aux.loss_weight-0.5 (seed 1) — 0 left" in lines

    # results.csv: one row per cell with every metric; results.md: mean ± std per grid point, best in bold
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["cell"] for r in rows] == names
    assert {"train.losses.aux.loss_weight", "seed", "psnr", "ssim"} <= set(rows[0])
    for r in rows:
        done = read_done(out / "cells" / r["cell"])
        assert float(r["psnr"]) == pytest.approx(done["metrics"]["psnr"])
        summary = yaml.safe_load((out / "cells" / r["cell"] / "eval" / "summary.json").read_text())
        assert summary["mean"]["psnr"] == pytest.approx(float(r["psnr"]))  # the ddr-eval result of that cell
    md = (out / "results.md").read_text()
    by_group = {}
    for r in rows:
        by_group.setdefault(r["train.losses.aux.loss_weight"], []).append(float(r["psnr"]))
    means = {k: statistics.mean(v) for k, v in by_group.items()}
    best = max(means, key=means.get)
    best_line = next(ln for ln in md.splitlines() if ln.startswith(f"| {best} |"))
    assert f"**{means[best]:.2f} ± {statistics.stdev(by_group[best]):.2f}**" in best_line
    png = out / "plot_train.losses.aux.loss_weight.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "![train.losses.aux.loss_weight](plot_train.losses.aux.loss_weight.png)" in md

    # a second invocation does no work: nothing trained, evaluated or rewritten
    before = _mtimes(out)
    lines.clear()
    again = run_ablation(_spec(base), out_dir=out, launcher="inline", echo=lines.append)
    assert again.ran == [] and sorted(again.skipped) == sorted(names)
    assert _mtimes(out) == before
    assert not any(ln.startswith("[cell") for ln in lines)

    # an interrupted cell (its last checkpoint and done marker gone) resumes; a cell killed while being evaluated
    # (training complete, no done marker) is only evaluated; the others are skipped
    resumed, evaluated = names[1], names[2]
    run = out / "runs" / resumed
    for p in (out / "cells" / resumed / "done.json", run / "models" / "net_g_2.pth",
              run / "training_states" / "2.state"):
        p.unlink()
    (out / "cells" / evaluated / "done.json").unlink()
    states_before = sorted((out / "runs" / evaluated / "training_states").iterdir())
    logs_before = sorted((out / "runs" / evaluated).glob("train_*.log"))
    third = run_ablation(_spec(base), out_dir=out, launcher="inline", echo=lines.append)
    assert sorted(third.ran) == sorted([resumed, evaluated]) and len(third.skipped) == 2
    assert f"[cell 2/4] aux.loss_weight-0 (seed 1) [resume] — 1 left" in lines
    assert f"[cell 3/4] aux.loss_weight-0.5 (seed 0) [evaluate] — 0 left" in lines
    newest_log = max(run.glob("train_*.log"), key=lambda p: p.stat().st_mtime_ns)
    assert "resumed from" in newest_log.read_text() and "iteration 1" in newest_log.read_text()
    assert sorted((out / "runs" / evaluated / "training_states").iterdir()) == states_before
    assert sorted((out / "runs" / evaluated).glob("train_*.log")) == logs_before
    assert all(read_done(out / "cells" / n) is not None for n in names)

    # finished cells trained with other options are refused before anything runs, naming cells and keys
    opt = yaml.safe_load(base.read_text())
    opt["train"]["optim_g"]["lr"] = 5e-4
    base.write_text(yaml.safe_dump(opt))
    with pytest.raises(InputError, match=r"(?s)aux\.loss_weight-0_seed0: train\.optim_g\.lr.*another --out"):
        run_ablation(_spec(base), out_dir=out, launcher="inline", echo=lines.append)
    # a longer schedule trains further instead
    opt["train"]["optim_g"]["lr"] = 1e-3
    base.write_text(yaml.safe_dump(opt))
    plans = plan_cells(_spec(base, overrides=["train.total_iter=3"]), out, {}, echo=lines.append)
    assert {p.action for p in plans} == {"train further"}


# ------------------------------------------------------------------------------------------ killed, restarted
@pytest.mark.slow
def test_killed_mid_grid_then_restarted_finishes_only_what_is_missing(tmp_path):
    """SIGKILL the ddr-ablate process while a cell's worker runs: the worker stops too (it gets SIGINT when its
    parent dies), and a second invocation skips the finished cell and runs the rest."""
    base = _base(tmp_path, total_iter=4)
    out = tmp_path / "abl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "ddr_restore.ablate.entry", "-opt", str(base), "--grid", GRID[0], "--seeds", "0,1",
           "--metrics", "psnr", "--out", str(out)]
    names = [c.name for c in _spec(base).cells()]
    first_done = out / "cells" / names[0] / "done.json"
    second_pid = out / "cells" / names[1] / "worker.pid"
    parent = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (first_done.is_file() and second_pid.is_file()) and time.monotonic() < deadline:
            assert parent.poll() is None, "ddr-ablate ended before it could be killed"
            time.sleep(0.05)
        assert first_done.is_file() and second_pid.is_file()
        worker = int(second_pid.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 60
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker of the killed ddr-ablate is still running"
    finally:
        if parent.poll() is None:
            parent.kill()
    finished = sorted(n for n in names if read_done(out / "cells" / n) is not None)
    # killed within moments of its start, the second cell's worker stopped instead of finishing as an orphan
    assert finished == [names[0]]
    stamp = first_done.stat().st_mtime_ns
    result = run_ablation(_spec(base, metrics=["psnr"]), out_dir=out, launcher="inline", echo=lambda s: None)
    assert sorted(result.skipped) == finished
    assert sorted(result.ran) == sorted(set(names) - set(finished))
    assert first_done.stat().st_mtime_ns == stamp
    with open(out / "results.csv", newline="") as f:
        assert [r["cell"] for r in csv.DictReader(f)] == names


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as stopped
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ ready grids
@pytest.mark.parametrize("name", ["nafnet_lambda", "nafnet_losses", "restormer_lambda", "restormer_losses",
                                  "gopro_mini_losses"])
def test_ready_grid_files_expand_into_valid_options(name, tmp_path):
    """Every cell of the shipped grids passes the options schema (loss kwargs checked against their classes)."""
    from ddr_restore.train.options import load_options, loss_terms

    spec = load_grid_file(REPO / "options" / "ablation" / f"{name}.yml")
    base = load_options(spec.base)
    cells = spec.cells()
    assert len(cells) == 18 and spec.seeds == [0, 1, 2]
    terms = set()
    for cell in cells:
        opt = cell_options(spec, cell, base, tmp_path)
        terms |= {(t.name, t.cfg["type"]) for t in loss_terms(opt["train"])}
        assert opt["manual_seed"] == cell.seed
    if name.endswith("_losses"):
        assert {t for t, _ in terms} == {"pix", "lpips", "ctx", "pdl", "fdl", "ddr"}
        assert ("pix", "PSNRLoss") in terms
    else:
        (axis,) = spec.axes
        assert axis.key == "train.losses.ddr.loss_weight" and axis.label == "λ_d" and 0 in axis.values
