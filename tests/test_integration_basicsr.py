"""ddr_restore inside BasicSR: basicsr 1.4.2's own train_pipeline with our NAFNet, PSNRLoss and DDRLoss, on the CPU.

Each run is a subprocess (``python -m ddr_restore.integrations.basicsr``), as a user runs it: basicsr keeps global
state (its root logger, registries, argv parsing) that makes repeated in-process runs fragile.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "options" / "basicsr" / "nafnet_ddr_basicsr.yml"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("basicsr") is None,
    reason="basicsr is not installed (optional extra: pip install -e '.[basicsr]', see the README)",
)


def _write_pairs(folder: Path, count: int, size: int, seed: int) -> None:
    """Same-named GT/LQ PNG pairs: a smooth colour pattern and the same plus noise."""
    import cv2

    rng = np.random.default_rng(seed)
    (folder / "gt").mkdir(parents=True)
    (folder / "lq").mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        gt = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (xx + yy) + p) for p in phase], -1)
        lq = np.clip(gt + rng.normal(0, 0.08, gt.shape), 0, 1)
        cv2.imwrite(str(folder / "gt" / f"{i:04d}.png"), (gt * 255).round().astype(np.uint8))
        cv2.imwrite(str(folder / "lq" / f"{i:04d}.png"), (lq * 255).round().astype(np.uint8))


def _tiny_options(data: Path, total_iter: int) -> Dict[str, Any]:
    """The shipped example, shrunk: a width-8 NAFNet, 32 px crops, random CLIP, CPU, checkpoints every 5 iters."""
    opt = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    opt["name"] = "tiny_ddr_basicsr"
    opt["num_gpu"] = 0
    train = opt["datasets"]["train"]
    train.update(dataroot_gt=str(data / "train" / "gt"), dataroot_lq=str(data / "train" / "lq"), gt_size=32,
                 batch_size_per_gpu=2, num_worker_per_gpu=0, persistent_workers=False)
    opt["datasets"]["val"].update(dataroot_gt=str(data / "val" / "gt"), dataroot_lq=str(data / "val" / "lq"))
    opt["network_g"] = {"type": "NAFNet", "width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1,
                        "dec_blk_nums": [1, 1]}
    opt["train"]["total_iter"] = total_iter
    opt["train"]["scheduler"]["T_max"] = 20
    opt["train"]["ddr_opt"]["pretrained"] = "none"  # random CLIP: offline plumbing only
    opt["val"] = {"val_freq": 10, "save_img": False,
                  "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": 0, "test_y_channel": False}}}
    opt["logger"] = {"print_freq": 1, "save_checkpoint_freq": 5, "use_tb_logger": False}
    opt.pop("dist_params", None)
    return opt


def _run(opt: Dict[str, Any], opt_file: Path, root: Path, cwd: Path, extra: List[str] = ()) -> str:
    opt_file.write_text(yaml.safe_dump(opt, sort_keys=False), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "ddr_restore.integrations.basicsr", "-opt", str(opt_file), "--root", str(root),
           *extra]
    returncode, output = _run_command(cmd, cwd, env)
    assert returncode == 0, f"{' '.join(cmd)} failed ({returncode}):\n{output[-4000:]}"
    return output


def _run_command(cmd: List[str], cwd: Path, env: Dict[str, str], timeout: float = 300) -> Tuple[int, str]:
    """Run ``cmd`` in its own process group; on timeout the whole group (torchrun's workers too) is killed."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s:\n{output[-4000:]}")
    return proc.returncode, output


def _iter_lines(log: str) -> List[str]:
    return [line for line in log.splitlines() if re.search(r"iter:\s*\d+", line) and "l_pix" in line]


@pytest.mark.slow
def test_basicsr_train_pipeline_ddr_then_auto_resume_on_cpu(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_pairs(data / "train", count=4, size=40, seed=0)
    _write_pairs(data / "val", count=1, size=32, seed=1)
    root = tmp_path / "runs"
    root.mkdir()
    exp = root / "experiments" / "tiny_ddr_basicsr"

    # 1) ten iterations from scratch, run from the root folder
    _run(_tiny_options(data, total_iter=10), tmp_path / "tiny.yml", root=root, cwd=root)
    logs = sorted(exp.glob("train_tiny_ddr_basicsr_*.log"))
    assert len(logs) == 1
    lines = _iter_lines(logs[0].read_text(encoding="utf-8"))
    # basicsr's MessageLogger prints every loss of the model's log_dict: both terms, every iteration
    assert len(lines) == 10 and all("l_ddr:" in line for line in lines), lines
    assert "DDRImageRestorationModel" in logs[0].read_text(encoding="utf-8")
    for path in ("models/net_g_10.pth", "models/net_g_latest.pth", "training_states/10.state"):
        assert (exp / path).is_file(), path

    # 2) resume with --auto_resume from ANOTHER folder (basicsr 1.4.2 would look in ./experiments there, start
    # again from iteration 0 and archive the run) up to iteration 15, still on the CPU
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = _run(_tiny_options(data, total_iter=15), tmp_path / "tiny15.yml", root=root, cwd=elsewhere,
               extra=["--auto_resume"])
    assert not list((root / "experiments").glob("*_archived_*")), out[-2000:]
    assert not (elsewhere / "experiments").exists()
    logs = sorted(exp.glob("train_tiny_ddr_basicsr_*.log"))
    assert len(logs) == 2
    resumed = max(logs, key=lambda p: p.stat().st_mtime).read_text(encoding="utf-8")
    assert "Resuming training from epoch" in resumed and "iter: 10." in resumed
    iters = [int(re.search(r"iter:\s*(\d+)", line).group(1)) for line in _iter_lines(resumed)]
    assert iters == list(range(11, 16)), iters
    assert (exp / "models" / "net_g_15.pth").is_file() and (exp / "training_states" / "15.state").is_file()


def test_parts_registered_in_basicsr_registries() -> None:
    """Registration runs in a subprocess too (importing basicsr in the test process would leave global state)."""
    code = (
        "import ddr_restore.integrations.basicsr as b\n"
        "from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY\n"
        "from ddr_restore.registry import ARCH_REGISTRY as A, LOSS_REGISTRY as L\n"
        "assert all(ARCH_REGISTRY.get(b.REGISTERED['arch'][n]) is A.get(n) for n in A.keys())\n"
        "assert all(LOSS_REGISTRY.get(b.REGISTERED['loss'][n]) is L.get(n) for n in L.keys())\n"
        "assert LOSS_REGISTRY.get('L1Loss').__module__.startswith('basicsr')\n"  # basicsr's own name kept
        "assert MODEL_REGISTRY.get('DDRImageRestorationModel') is b.DDRImageRestorationModel\n"
        "assert b.register_ddr_parts() == b.REGISTERED\n"  # idempotent
        "import json; print(json.dumps(b.REGISTERED['loss']))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = json.loads(proc.stdout.strip().splitlines()[-1])
    for ours in ("DDRLoss", "PSNRLoss", "LPIPSLoss", "ContextualLoss", "ProjectedDistributionLoss",
                 "FrequencyDistributionLoss"):
        assert names[ours] == ours
    assert names["L1Loss"] == "L1Loss_ddr" and names["CharbonnierLoss"] == "CharbonnierLoss_ddr"


@pytest.mark.slow
def test_basicsr_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    """``--launcher pytorch`` on the CPU: gloo, DDP without device_ids (basicsr 1.4.2: ZeroDivisionError)."""
    data = tmp_path / "data"
    _write_pairs(data / "train", count=4, size=40, seed=0)
    _write_pairs(data / "val", count=1, size=32, seed=1)
    opt = _tiny_options(data, total_iter=4)
    opt["name"] = "tiny_ddp_basicsr"
    opt["logger"]["save_checkpoint_freq"] = 2
    del opt["train"]["ddr_opt"]  # two CLIPs on a 2-core CI box cost time and test nothing more here
    opt_file = tmp_path / "ddp.yml"
    opt_file.write_text(yaml.safe_dump(opt, sort_keys=False), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    # --standalone: a local rendezvous on a free port (parallel CI jobs do not collide on 29500)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "ddr_restore.integrations.basicsr", "-opt", str(opt_file), "--launcher", "pytorch"]
    returncode, output = _run_command(cmd, tmp_path, env, timeout=180)
    assert returncode == 0, output[-4000:]
    log = next((tmp_path / "experiments" / "tiny_ddp_basicsr").glob("train_*.log")).read_text(encoding="utf-8")
    assert "World size (gpu number): 2" in log and "DistributedDataParallel" in log
    assert len(_iter_lines(log)) == 4
    assert (tmp_path / "experiments" / "tiny_ddp_basicsr" / "models" / "net_g_4.pth").is_file()
