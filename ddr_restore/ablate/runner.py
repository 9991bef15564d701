"""Run the cells of an ablation: plan (what is finished), launch (one after another, ``jobs`` at a time, or under
torchrun), train, evaluate, and leave files from which a second invocation knows what is left.

Layout of an ablation folder ``<out>`` (default ``ablations/<name>``)::

    <out>/cells/<cell>/cell.json      what the cell is (axis values, seed, overrides, test set, metrics)
    <out>/cells/<cell>/options.yml    its complete training options (ddr-train -opt accepts it as it is)
    <out>/cells/<cell>/worker.log     the output of its worker process(es), appended per attempt
    <out>/cells/<cell>/eval/          ddr-eval's per_image.csv and summary.json for the final checkpoint
    <out>/cells/<cell>/done.json      written last: the metrics; its presence marks the cell finished
    <out>/runs/<cell>/                the experiment folder (checkpoints, training states, logs, TensorBoard)
    <out>/test_set/{input,target}/    a test set given as a dataset, written once as PNG pairs
    <out>/results.csv, results.md, plot_*.png      (ddr_restore.ablate.report)

Finished, resumed, redone:

* a cell is finished when its ``done.json`` exists, its test set and metrics are the current ones and its training
  options agree with the current ones (compared as a resumed run compares them, see
  :func:`ddr_restore.train.options.resume_changes`); finished cells are skipped. A larger ``train.total_iter``
  continues training from the last checkpoint; another test set or metric list re-evaluates only. A change that a
  resumed run refuses (another learning rate, loss, network...) stops the ablation before anything runs, naming
  the cells and keys: use another ``--out``.
* an unfinished cell runs its worker, which resumes from the newest complete checkpoint (``auto_resume``), or
  evaluates only when training had already reached ``total_iter`` (the evaluation of a killed run).
* Ctrl-C / SIGTERM: every running worker is asked to stop once (it saves its current iteration, exit 130); the
  reports are written for the finished cells. Workers run in their own sessions and get SIGINT when this process
  dies, even by SIGKILL (Linux), so no orphan goes on training a cell that a restart would start again. A cell
  whose worker from an earlier invocation is still alive is refused, naming the process.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ddr_restore.ablate.grid import AblationSpec, Cell, apply_overrides
from ddr_restore.errors import InputError, UserError

__all__ = ["CellPlan", "AblationResult", "AblationInterrupted", "plan_cells", "cell_options", "resolve_test",
           "run_cell", "run_ablation", "evaluate_checkpoint", "LAUNCHERS", "DEFAULT_METRICS", "EVAL_KNOBS",
           "read_done", "cell_dir_of"]

PathLike = Union[str, os.PathLike]
Echo = Callable[[str], None]

#: how a cell's worker is started: a subprocess (``python -m ddr_restore.ablate.worker``), torchrun around it,
#: or in this process (one cell at a time; for notebooks and tests)
LAUNCHERS = ("subprocess", "torchrun", "inline")
DEFAULT_METRICS = ("psnr", "ssim", "lpips")
#: ``test:`` keys that set up the evaluation itself, passed to :func:`ddr_restore.eval.evaluate` as they are:
#: ``metric_options`` (e.g. ``{crop_border: 4, lpips.net: vgg}``), the network's ``tlc``/``prefer_ema``/``tile``/
#: ``tile_overlap``/``amp``, ``device`` (default ``auto``) and ``max_images``
EVAL_KNOBS = ("metric_options", "tile", "tile_overlap", "amp", "device", "max_images", "tlc", "prefer_ema")
_PATH_KEYS = ("root", "input_dir", "target_dir", "list_file")
_PRESET_KEYS = ("preset",) + _PATH_KEYS + ("scale", "layout", "cameras", "filename_tmpl")  # sr/realsr: scale, ...
EXIT_INTERRUPTED = 130
EXIT_USER_ERROR = 2

CELLS, RUNS, TEST_SET = "cells", "runs", "test_set"
CELL_JSON, OPTIONS, DONE, LOG, PID, EVAL = "cell.json", "options.yml", "done.json", "worker.log", "worker.pid", "eval"


class AblationInterrupted(KeyboardInterrupt):
    """Ctrl-C/SIGTERM stopped the ablation; ``result`` says what had finished (reports were written)."""

    def __init__(self, result: "AblationResult") -> None:
        super().__init__("ablation interrupted")
        self.result = result


@dataclass
class CellPlan:
    """A cell, its folder, its resolved training options and whether it is already finished."""

    cell: Cell
    cell_dir: Path
    options: Dict[str, Any]
    done: Optional[Dict[str, Any]] = None
    #: why an unfinished cell runs: "new", "resume" (a checkpoint exists), "evaluate" (training had finished),
    #: "train further" (a larger total_iter), "re-evaluate" (another test set or metric list)
    action: str = "new"


@dataclass
class AblationResult:
    """What :func:`run_ablation` did."""

    out_dir: Path
    cells: List[Cell]
    ran: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    reports: Dict[str, Path] = field(default_factory=dict)

    @property
    def missing(self) -> List[str]:
        """Cells without results (not run yet, failed or interrupted)."""
        finished = set(self.ran) | set(self.skipped)
        return [c.name for c in self.cells if c.name not in finished]


# ------------------------------------------------------------------------------------------------------ files
def cell_dir_of(out_dir: PathLike, cell: Union[Cell, str]) -> Path:
    """The runner's folder of a cell (its experiment folder is ``<out>/runs/<cell>``)."""
    return Path(out_dir) / CELLS / (cell if isinstance(cell, str) else cell.name)


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a killed run leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_done(cell_dir: PathLike) -> Optional[Dict[str, Any]]:
    """A cell's ``done.json`` (``None`` when absent or unreadable: an unreadable one is redone)."""
    path = Path(cell_dir) / DONE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("metrics"), dict) else None


# ------------------------------------------------------------------------------------------------------ options
def cell_options(spec: AblationSpec, cell: Cell, base_opt: Mapping[str, Any], out_dir: PathLike) -> Dict[str, Any]:
    """The validated training options of one cell: the base, the overrides, its seed, name and experiments root.

    Raises:
        InputError: naming the cell and the key (an override whose parent is missing, or a value the options
            schema refuses).
    """
    from ddr_restore.train.options import OptionsError, validate_options

    where = f"cell {cell.name}: "
    opt = apply_overrides(base_opt, cell.overrides, where=where)
    opt["name"] = cell.name
    opt["manual_seed"] = cell.seed
    opt.setdefault("path", {})
    if not isinstance(opt["path"], dict):
        raise InputError(f"{spec.base}: path: expected a mapping")
    opt["path"] = {**opt["path"], "experiments_root": str((Path(out_dir) / RUNS).resolve()), "resume_state": None}
    try:
        return validate_options(opt)
    except OptionsError as err:
        raise InputError(f"{where}{spec.base} with the cell's values: {err}") from None
    except (KeyError, TypeError) as err:  # a registry lookup outside the schema check
        raise InputError(f"{where}{err.args[0] if err.args else err}") from None


def _known_metrics() -> List[str]:
    from ddr_restore.ablate.report import known_metrics

    return known_metrics()


def resolve_test(test: Optional[Mapping[str, Any]], base_opt: Mapping[str, Any], out_dir: PathLike,
                 metrics: Optional[Sequence[str]] = None, echo: Echo = print) -> Dict[str, Any]:
    """The test set and metrics every cell is evaluated with, as a JSON-able dict.

    ``test`` is either ``{preset: gopro|realblur|folder, root/input_dir/target_dir/list_file: ...}`` (passed to
    :func:`ddr_restore.eval.evaluate`; paths made absolute) or ``{dataset: <datasets.* phase name of the base
    options, e.g. val> | {type: ..., <dataset options>}}``: the dataset's items (what its ``val`` phase yields,
    centre crops included) are written once to ``<out>/test_set/{input,target}`` as 8-bit PNGs (ddr-eval reads
    8-bit images) and scored as paired folders. Default: ``{dataset: val}``. Other keys: :data:`EVAL_KNOBS`.
    """
    test = dict(test) if test else {"dataset": "val"}
    knobs = {k: test.pop(k) for k in EVAL_KNOBS if k in test}
    metrics = list(metrics) if metrics else list(DEFAULT_METRICS)
    known = _known_metrics()
    bad = [m for m in metrics if m not in known]
    if bad:
        raise InputError(f"metrics: unknown metric(s) {', '.join(bad)}; known: {', '.join(known)}")
    if "dataset" in test:
        extra = [k for k in test if k != "dataset"]
        if extra:
            raise InputError(f"test: {', '.join(extra)}: not used with test.dataset (give a preset instead, or put "
                             "the dataset's options under dataset:)")
        source = test["dataset"]
        if isinstance(source, str):
            datasets = base_opt.get("datasets") or {}
            if source not in datasets or not isinstance(datasets[source], Mapping):
                phases = [p for p in datasets if p != "train"]
                raise InputError(f"test.dataset: the base options have no datasets.{source} (test sets there: "
                                 f"{', '.join(phases) or 'none'}); give --test-set PRESET:PATH or a dataset mapping")
            cfg = dict(datasets[source])
        elif isinstance(source, Mapping):
            cfg = dict(source)
        else:
            raise InputError(f"test.dataset: expected a datasets.* name (e.g. val) or a dataset mapping, got "
                             f"{source!r}")
        scale = int(base_opt.get("scale") or 1)
        where = _materialize(cfg, Path(out_dir) / TEST_SET, scale, echo).resolve()
        spec = {"preset": "folder", "input_dir": str(where / "input"), "target_dir": str(where / "target"),
                "dataset": cfg}
        if scale > 1:  # super-resolution: LR inputs, the SR protocol (Y channel, crop_border = scale)
            spec.update(preset="sr", scale=scale)
    else:
        unknown = [k for k in test if k not in _PRESET_KEYS]
        if unknown or "preset" not in test:
            raise InputError(f"test: {', '.join(unknown) or 'preset'}: a test set is {{preset: gopro|realblur|folder|sr|realsr, "
                             f"root/input_dir/target_dir/list_file[/scale/layout/cameras/filename_tmpl]: ...}} or {{dataset: ...}} (other keys: "
                             f"{', '.join(EVAL_KNOBS)})")
        spec = {k: (str(Path(os.path.expanduser(str(v))).resolve()) if k in _PATH_KEYS and v is not None else v)
                for k, v in test.items()}
        if spec["preset"] in ("sr", "realsr") and spec.get("scale") is None and int(base_opt.get("scale") or 1) > 1:
            spec["scale"] = int(base_opt["scale"])  # the base options' scale, unless the test set names one
        from ddr_restore.eval.presets import collect_items

        # Pair the test set now: a missing folder must not wait until the first cell has trained.
        sr_keys = {k: spec[k] for k in ("scale", "layout", "cameras", "filename_tmpl") if spec.get(k) is not None}
        collect_items(spec["preset"], spec.get("root"), spec.get("input_dir"), spec.get("target_dir"),
                      spec.get("list_file"), **sr_keys)
    return {"test": spec, "eval": knobs, "metrics": metrics}


def _materialize(cfg: Mapping[str, Any], folder: Path, scale: int, echo: Echo) -> Path:
    """Write the items of a dataset as ``folder/{input,target}/<name>.png`` (once; redone when ``cfg`` changes)."""
    marker = folder / "dataset.json"
    wanted = json.loads(json.dumps({"dataset": cfg, "scale": scale}, default=str))
    try:
        if json.loads(marker.read_text(encoding="utf-8")) == wanted:
            return folder
    except (OSError, ValueError):
        pass
    import inspect

    from ddr_restore.data import build_dataset
    from ddr_restore.imageio import tensor2img, write_image
    from ddr_restore.registry import DATASET_REGISTRY

    cfg = dict(cfg)
    try:
        cls = DATASET_REGISTRY.get(str(cfg.get("type", "")))
    except KeyError as err:
        raise InputError(f"test.dataset.type: {err.args[0]}") from None
    if "scale" not in cfg and "scale" in inspect.signature(cls).parameters:
        cfg["scale"] = scale
    try:
        dataset = build_dataset(cfg, "test")
    except (KeyError, TypeError, ValueError, OSError) as err:
        if isinstance(err, UserError):
            raise type(err)(f"test.dataset: {err}") from None
        raise InputError(f"test.dataset: {err.args[0] if err.args else err}") from None
    if len(dataset) == 0:
        raise InputError(f"test.dataset: the dataset {cfg.get('type')} has no items")
    for sub in ("input", "target"):
        if (folder / sub).is_dir():
            shutil.rmtree(folder / sub)
    names: List[str] = []
    for i in range(len(dataset)):
        item = dataset[i]
        stem = Path(str(item["lq_path"])).stem if item.get("lq_path") else f"{i:04d}"
        name = stem if stem not in names else f"{stem}_{i:04d}"
        names.append(name)
        write_image(folder / "input" / f"{name}.png", tensor2img(item["lq"]))
        write_image(folder / "target" / f"{name}.png", tensor2img(item["gt"]))
    _write_json(marker, wanted)
    echo(f"test set: {len(names)} pairs written to {folder}")
    return folder


# ------------------------------------------------------------------------------------------------------ planning
def _same_training(saved: Mapping[str, Any], new: Mapping[str, Any]) -> Tuple[List[str], bool]:
    """(keys a resumed run would refuse, whether total_iter grew) between a finished cell's options and now."""
    from ddr_restore.train.options import resume_changes

    applied, refused = resume_changes(saved, new)
    return [k for k, _, _ in refused], any(k == "train.total_iter" for k, _, _ in applied)


def _evaluation_key(evaluation: Any) -> Any:
    """What makes two evaluations the same: for a dataset test set, the dataset (not where it was written, so a
    moved ablation folder is not evaluated again)."""
    if not isinstance(evaluation, Mapping):
        return None
    key = json.loads(json.dumps(evaluation, default=str))
    test = key.get("test")
    if isinstance(test, dict) and "dataset" in test:
        test.pop("input_dir", None)
        test.pop("target_dir", None)
    return key


def _alive_worker(cell_dir: Path) -> Optional[int]:
    """The pid in ``worker.pid`` when that process is alive and runs this cell, else ``None`` (stale file removed)."""
    pid_file = cell_dir / PID
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        alive = str(cell_dir) in cmdline
    except (OSError, ProcessLookupError):
        alive = False
    if not alive:
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def _wait_for_earlier_worker(cell_dir: Path, cell: Cell, echo: Echo, wait_s: float) -> None:
    """A worker of an earlier, killed invocation may still be saving its checkpoint: wait up to ``wait_s``."""
    pid = _alive_worker(cell_dir)
    if pid is None:
        return
    echo(f"cell {cell.name}: waiting for process {pid} (a worker of an earlier ddr-ablate) to stop ...")
    deadline = time.monotonic() + wait_s
    while pid is not None and time.monotonic() < deadline:
        time.sleep(0.5)
        pid = _alive_worker(cell_dir)
    if pid is not None:
        raise InputError(f"cell {cell.name} is still being run by process {pid} (a worker of an earlier "
                         "ddr-ablate); stop it (kill -INT saves its iteration) and start again")


def plan_cells(spec: AblationSpec, out_dir: PathLike, evaluation: Mapping[str, Any],
               base_opt: Optional[Mapping[str, Any]] = None, echo: Echo = print,
               wait_s: float = 120.0) -> List[CellPlan]:
    """Resolve every cell's options (all errors before anything runs) and decide which are finished.

    A cell whose worker from an earlier invocation is still alive (e.g. saving after its parent was killed) is
    waited for, up to ``wait_s`` seconds.

    Raises:
        InputError: a bad override/option (naming the cell and key), finished cells trained with options a resumed
            run would refuse (naming cells and keys), or a cell another live process still runs after ``wait_s``.
    """
    from ddr_restore.train import checkpoint as ckpt
    from ddr_restore.train.options import load_options

    base = dict(base_opt) if base_opt is not None else load_options(spec.base)
    out_dir = Path(out_dir)
    plans: List[CellPlan] = []
    conflicts: List[str] = []
    for cell in spec.cells():
        opt = cell_options(spec, cell, base, out_dir)
        cdir = cell_dir_of(out_dir, cell)
        _wait_for_earlier_worker(cdir, cell, echo, wait_s)
        plan = CellPlan(cell=cell, cell_dir=cdir, options=opt)
        done = read_done(cdir)
        if done is not None:
            refused, longer = _same_training(done.get("options") or {}, opt)
            if refused:
                conflicts.append(f"{cell.name}: {', '.join(refused)}")
            elif longer:
                plan.action = "train further"
            elif _evaluation_key(done.get("evaluation")) != _evaluation_key(evaluation):
                plan.action = "re-evaluate"
            else:
                plan.done = done
        if plan.done is None and plan.action == "new":
            exp = Path(opt["path"]["experiments_root"]) / cell.name
            found = ckpt.find_latest_state(exp / "training_states", exp / "models")
            if found is not None:
                plan.action = "evaluate" if found[0] >= int(opt["train"]["total_iter"]) else "resume"
        plans.append(plan)
    if conflicts:
        raise InputError(f"{out_dir}: these finished cells were trained with options that differ from the current "
                         "ones in keys a resumed run cannot change:\n  " + "\n  ".join(conflicts) +
                         f"\nUse another --out for the new ablation (or delete those cells under {out_dir / CELLS} "
                         f"and {out_dir / RUNS} to train them again).")
    return plans


# ------------------------------------------------------------------------------------------------------ one cell
def evaluate_checkpoint(option_file: PathLike, checkpoint: PathLike, evaluation: Mapping[str, Any],
                        out_dir: PathLike) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """Score a checkpoint on the ablation's test set with :func:`ddr_restore.eval.evaluate`.

    Returns ``(mean metric values, ddr-eval's summary)``. A requested metric that could not be computed (e.g.
    LPIPS weights not fetched) is an :class:`InputError` naming the reason: a table with a silently missing
    column would mislead.
    """
    from ddr_restore.eval import evaluate

    test, knobs, metrics = dict(evaluation["test"]), dict(evaluation.get("eval") or {}), list(evaluation["metrics"])
    test.pop("dataset", None)
    preset = test.pop("preset")
    kwargs: Dict[str, Any] = {**test, **knobs}
    kwargs.setdefault("device", "auto")
    summary = evaluate(preset, option_file=str(option_file), checkpoint=str(checkpoint), out_dir=str(out_dir),
                       metrics=metrics, overwrite=True, progress=False, **kwargs)
    means = summary.get("mean") or {}
    values: Dict[str, float] = {}
    for m in metrics:
        value = means.get(m)
        if value is None:
            status = ((summary.get("metrics") or {}).get(m) or {}).get("status", "not computed")
            raise InputError(f"metric {m}: no value for {checkpoint} ({status})"
                             + ("; run ddr-fetch-lpips once, or leave lpips out of --metrics" if m == "lpips" else ""))
        values[m] = float(value)
    return values, summary


def run_cell(cell_dir: PathLike, launcher: str = "none") -> Optional[Dict[str, Any]]:
    """Train one cell (resuming its newest complete checkpoint), evaluate its final checkpoint, write done.json.

    This is what a worker process runs; ``launcher="pytorch"`` inside torchrun (rank 0 evaluates; the other ranks
    return ``None``). Returns the done.json content.

    Raises:
        InputError: options, data or a checkpoint that does not fit; TrainingInterrupted: Ctrl-C (the current
            iteration was saved); TrainingDivergedError: NaN/inf loss.
    """
    from ddr_restore.train import checkpoint as ckpt
    from ddr_restore.train import train
    from ddr_restore.train.options import parse_options

    cell_dir = Path(cell_dir).resolve()
    info = json.loads((cell_dir / CELL_JSON).read_text(encoding="utf-8"))
    option_file = cell_dir / OPTIONS
    opt = parse_options(option_file)
    exp = Path(opt["path"]["experiments_root"]) / opt["name"]
    total = int(opt["train"]["total_iter"])
    found = ckpt.find_latest_state(exp / "training_states", exp / "models")
    t0 = time.perf_counter()
    if found is None or found[0] < total:
        train(opt, auto_resume=True, launcher=launcher, command_line=f"ddr-ablate worker {cell_dir}",
              options_name=str(option_file))
        if launcher == "pytorch":
            from ddr_restore.train.distributed import get_dist_info, shutdown

            rank = get_dist_info().rank
            shutdown()
            if rank != 0:
                return None
    else:
        state = ckpt.safe_load(found[1])
        saved = state.get("options") if isinstance(state, Mapping) else None
        if found[0] > total or (saved is not None and _same_training(saved, opt)[0]):
            raise InputError(f"cell {opt['name']}: its checkpoint {found[1]} (iteration {found[0]}) was trained with "
                             f"other options or further than train.total_iter={total}; use another --out")
        if launcher == "pytorch" and int(os.environ.get("RANK", "0")) != 0:
            return None
    train_seconds = time.perf_counter() - t0
    checkpoint = exp / "models" / f"net_g_{total}.pth"
    t1 = time.perf_counter()
    values, summary = evaluate_checkpoint(option_file, checkpoint, info["evaluation"], cell_dir / EVAL)
    done = {
        "cell": info["cell"],
        "metrics": values,
        "iterations": total,
        "checkpoint": str(checkpoint),
        "train_seconds_last_attempt": round(train_seconds, 2),
        "eval_seconds": round(time.perf_counter() - t1, 2),
        "num_test_images": summary.get("num_images"),
        "device": summary.get("device"),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "evaluation": info["evaluation"],
        "options": json.loads(json.dumps(opt, default=str)),
    }
    _write_json(cell_dir / DONE, done)
    return done


def _prepare_cell(plan: CellPlan, evaluation: Mapping[str, Any], spec: AblationSpec) -> None:
    """Write cell.json and options.yml (the inputs of its worker); drop a stale done.json."""
    from ddr_restore.train.options import dump_options

    plan.cell_dir.mkdir(parents=True, exist_ok=True)
    (plan.cell_dir / DONE).unlink(missing_ok=True)
    cell = plan.cell
    _write_json(plan.cell_dir / CELL_JSON, {
        "cell": {"name": cell.name, "group": cell.group, "seed": cell.seed, "values": dict(cell.values)},
        "overrides": [[k, v] for k, v in cell.overrides],
        "base": str(spec.base),
        "grid_file": str(spec.grid_file) if spec.grid_file else None,
        "evaluation": evaluation,
    })
    header = [f"ddr-ablate cell {cell.name} of {spec.name}: base {spec.base}, seed {cell.seed}"]
    header += [f"  {k} = {json.dumps(v, default=str)}" for k, v in cell.overrides]
    dump_options(plan.options, plan.cell_dir / OPTIONS, header)


# ------------------------------------------------------------------------------------------------------ processes
def _parent_death_signal() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` that makes the child get SIGINT when this process dies (Linux prctl), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGINT), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGINT)

    return preexec


def _worker_command(cell_dir: Path, launcher: str, nproc: int) -> List[str]:
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
                "ddr_restore.ablate.worker", str(cell_dir), "--launcher", "pytorch"]
    return [sys.executable, "-m", "ddr_restore.ablate.worker", str(cell_dir)]


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    kept = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join("    " + ln for ln in kept)


@dataclass
class _Running:
    plan: CellPlan
    proc: "subprocess.Popen[bytes]"
    started: float
    log: Any
    stop_sent: int = 0


class _Signals:
    """SIGTERM handled like Ctrl-C while the ablation runs (main thread only)."""

    def __enter__(self) -> "_Signals":
        self.previous = None
        import threading

        if threading.current_thread() is threading.main_thread():
            def to_interrupt(signum: int, frame: Any) -> None:
                raise KeyboardInterrupt

            self.previous = signal.signal(signal.SIGTERM, to_interrupt)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _describe(index: int, total: int, cell: Cell) -> str:
    return f"[cell {index}/{total}] {cell.group} (seed {cell.seed})"


def run_ablation(
    spec: AblationSpec,
    out_dir: Optional[PathLike] = None,
    jobs: int = 1,
    launcher: str = "subprocess",
    nproc: int = 1,
    dry_run: bool = False,
    echo: Echo = print,
) -> AblationResult:
    """Run every unfinished cell of ``spec``, then write results.csv, results.md and the plots.

    Args:
        spec: from :func:`ddr_restore.ablate.grid.load_spec`.
        out_dir: the ablation folder (default ``ablations/<spec.name>``).
        jobs: cells trained at the same time (subprocess launcher). With several jobs on a CPU and no
            ``OMP_NUM_THREADS`` set, each worker gets ``cpu_count // jobs`` threads.
        launcher: one of :data:`LAUNCHERS`; ``torchrun`` runs each cell with ``nproc`` processes.
        dry_run: plan only (print the cells and what would run), write nothing but the test set.
        echo: where progress lines go.

    Returns:
        An :class:`AblationResult`; failed cells are listed in ``failed`` (the others still ran).

    Raises:
        InputError / MissingPathError: before anything runs (grid, options, test set, finished cells trained
            otherwise), or a worker's user error (no further cell is started then: the next would most likely fail
            the same way).
        AblationInterrupted: Ctrl-C or SIGTERM (running workers saved their iteration; reports were written).
    """
    from ddr_restore.ablate.report import write_reports
    from ddr_restore.train.options import load_options

    if launcher not in LAUNCHERS:
        raise InputError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if jobs < 1 or nproc < 1:
        raise InputError(f"jobs and nproc must be >= 1, got jobs={jobs}, nproc={nproc}")
    if launcher == "inline" and jobs != 1:
        raise InputError("the inline launcher runs one cell at a time (jobs=1)")
    out = Path(out_dir) if out_dir is not None else Path("ablations") / str(spec.name)
    base_opt = load_options(spec.base)
    # The test set comes from the base options as every cell sees them: --set / set: overrides (e.g. a data
    # folder) apply to it too; grid axes do not (the test set is common to all cells).
    test_opt = apply_overrides(base_opt, [*spec.common, *spec.last], where="set: ")
    evaluation = resolve_test(spec.test, test_opt, out, spec.metrics, echo)
    evaluation = json.loads(json.dumps(evaluation, default=str))
    plans = plan_cells(spec, out, evaluation, base_opt, echo=echo)
    total = len(plans)
    result = AblationResult(out_dir=out, cells=[p.cell for p in plans])
    todo = [(i + 1, p) for i, p in enumerate(plans) if p.done is None]
    result.skipped = [p.cell.name for p in plans if p.done is not None]
    echo(f"ddr-ablate {spec.name}: {total} cells ({len(spec.cells()) // max(1, len(spec.seeds))} x "
         f"{len(spec.seeds)} seeds) in {out}; {len(result.skipped)} finished earlier, {len(todo)} to run")
    if todo and launcher != "inline":
        echo(f"each cell's training and evaluation output: {out / CELLS}/<cell>/{LOG}; TensorBoard: "
             f"{out / RUNS}")
    if dry_run:
        for index, p in todo:
            echo(f"{_describe(index, total, p.cell)} would {p.action if p.action != 'new' else 'run'}")
        return result
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env and launcher == "subprocess":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    env.setdefault("PYTHONUNBUFFERED", "1")
    stop_reason: Optional[str] = None
    running: List[_Running] = []
    pending = list(todo)
    try:
        with _Signals():
            while pending or running:
                while pending and len(running) < jobs and stop_reason is None:
                    index, plan = pending.pop(0)
                    left = len(pending) + len(running)
                    how = "" if plan.action == "new" else f" [{plan.action}]"
                    echo(f"{_describe(index, total, plan.cell)}{how} — {left} left")
                    _prepare_cell(plan, evaluation, spec)
                    if launcher == "inline":
                        _run_inline(plan, result, echo)
                        continue
                    running.append(_start(plan, launcher, nproc, env, echo))
                for job in list(running):
                    rc = job.proc.poll()
                    if rc is None:
                        continue
                    running.remove(job)
                    stop = _finish(job, rc, result, echo)
                    if stop and stop_reason is None:
                        stop_reason = stop
                if stop_reason is not None and not running:
                    break
                if running:
                    time.sleep(0.2)
    except KeyboardInterrupt:
        result.interrupted = True
        echo(f"\nddr-ablate: interrupted; asking {len(running)} running cell(s) to save and stop ...")
        _stop_all(running, result, echo)
    finally:
        for job in running:
            if job.proc.poll() is None:  # never leave a worker behind
                job.proc.kill()
            (job.plan.cell_dir / PID).unlink(missing_ok=True)
    result.reports = write_reports(out, spec, [p.cell for p in plans], echo=echo)
    if result.interrupted:
        raise AblationInterrupted(result)
    if stop_reason is not None:
        raise InputError(stop_reason)
    return result


def _start(plan: CellPlan, launcher: str, nproc: int, env: Mapping[str, str], echo: Echo) -> _Running:
    log = open(plan.cell_dir / LOG, "ab")
    log.write(f"\n===== {datetime.datetime.now().isoformat(timespec='seconds')} {plan.action} =====\n".encode())
    log.flush()
    cmd = _worker_command(plan.cell_dir.resolve(), launcher, nproc)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(env),
                            start_new_session=True, preexec_fn=_parent_death_signal())
    (plan.cell_dir / PID).write_text(f"{proc.pid}\n")
    return _Running(plan=plan, proc=proc, started=time.perf_counter(), log=log)


def _metrics_line(done: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in (done.get("metrics") or {}).items())


def _finish(job: _Running, rc: int, result: AblationResult, echo: Echo) -> Optional[str]:
    """Record a finished worker; returns a reason to start no further cell (a user error), else ``None``."""
    job.log.close()
    (job.plan.cell_dir / PID).unlink(missing_ok=True)
    name, seconds = job.plan.cell.name, time.perf_counter() - job.started
    done = read_done(job.plan.cell_dir)
    if rc == 0 and done is not None:
        result.ran.append(name)
        echo(f"  {name}: done in {seconds:.0f} s: {_metrics_line(done)}")
        return None
    log = job.plan.cell_dir / LOG
    if rc == EXIT_INTERRUPTED or (rc < 0 and -rc in (signal.SIGINT, signal.SIGTERM)):
        result.interrupted = True
        result.failed[name] = "interrupted"
        echo(f"  {name}: interrupted after {seconds:.0f} s (its last iteration was saved; run again to resume)")
        return None
    what = {EXIT_USER_ERROR: "error", 3: "diverged (NaN/inf loss)"}.get(rc, f"failed (exit status {rc})")
    result.failed[name] = what
    echo(f"  {name}: {what} after {seconds:.0f} s; log {log}:\n{_tail(log)}")
    if rc == EXIT_USER_ERROR:
        return (f"cell {name} stopped with a user error (see {log}); no further cell was started. Fix it and run "
                "the same command again: finished cells are kept")
    return None


def _stop_all(running: List[_Running], result: AblationResult, echo: Echo) -> None:
    """SIGINT to each worker once (it saves and exits 130); a second Ctrl-C here sends another, which aborts it."""
    for job in running:
        if job.proc.poll() is None:
            _signal_group(job.proc, signal.SIGINT)
            job.stop_sent = 1
    while running:
        try:
            for job in list(running):
                rc = job.proc.poll()
                if rc is not None:
                    running.remove(job)
                    _finish(job, rc, result, echo)
            time.sleep(0.2)
        except KeyboardInterrupt:
            echo("ddr-ablate: second Ctrl-C: aborting the workers without saving")
            for job in running:
                _signal_group(job.proc, signal.SIGINT)


def _signal_group(proc: "subprocess.Popen[bytes]", sig: int) -> None:
    # The worker leads its own session: torchrun and its ranks are in that group and all get the signal.
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _run_inline(plan: CellPlan, result: AblationResult, echo: Echo) -> None:
    t0 = time.perf_counter()
    try:
        done = run_cell(plan.cell_dir, launcher="none")
    except UserError:
        raise
    except KeyboardInterrupt:
        result.failed[plan.cell.name] = "interrupted"
        raise
    except Exception as err:  # a diverged or crashed cell: the others still run
        result.failed[plan.cell.name] = f"{type(err).__name__}: {err}"
        echo(f"  {plan.cell.name}: failed: {type(err).__name__}: {err}")
        return
    result.ran.append(plan.cell.name)
    echo(f"  {plan.cell.name}: done in {time.perf_counter() - t0:.0f} s: {_metrics_line(done or {})}")
