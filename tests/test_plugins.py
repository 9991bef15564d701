"""Users' own parts in ddr-train: ``imports:`` modules, the ``ddr_restore.plugins`` entry-point group, and the errors
that name them."""
from __future__ import annotations

import textwrap
import uuid
import warnings
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import yaml

from ddr_restore import plugins
from ddr_restore.errors import InputError
from ddr_restore.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, Registry
from ddr_restore.train.entry import main as train_main
from ddr_restore.train.options import OptionsError, parse_options


@pytest.fixture(autouse=True)
def isolated_plugins(monkeypatch):
    """Each test starts with no plugin recorded and leaves the registries as it found them."""
    for registry in (ARCH_REGISTRY, LOSS_REGISTRY, DATASET_REGISTRY):
        registry.keys()  # built-ins first, so the copies below hold them
        monkeypatch.setattr(registry, "_objects", dict(registry._objects))
    monkeypatch.setattr(plugins, "_loaded", [])
    monkeypatch.setattr(plugins, "_failed", [])
    monkeypatch.setattr(plugins, "_entry_points_done", False)


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _write_user_package(folder: Path, suffix: str) -> Dict[str, str]:
    """A user's project, outside ddr_restore: one module with a network, one with a loss (counting its calls)."""
    pkg = f"userproj_{suffix}"
    (folder / pkg).mkdir(parents=True)
    (folder / pkg / "__init__.py").write_text("")
    (folder / pkg / "archs.py").write_text(textwrap.dedent(f"""
        import torch
        from ddr_restore.registry import ARCH_REGISTRY

        @ARCH_REGISTRY.register("ToyNet_{suffix}")
        class ToyNet(torch.nn.Module):
            def __init__(self, width=4):
                super().__init__()
                self.body = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
                                                torch.nn.Conv2d(width, 3, 3, padding=1))

            def forward(self, x):
                return x + self.body(x)
        """))
    (folder / pkg / "losses.py").write_text(textwrap.dedent(f"""
        import torch
        from ddr_restore.registry import LOSS_REGISTRY

        CALLS = []

        @LOSS_REGISTRY.register("ToyLoss_{suffix}")
        class ToyLoss(torch.nn.Module):
            requires_target = True

            def __init__(self, loss_weight=1.0, power=2):
                super().__init__()
                self.loss_weight, self.power = loss_weight, power

            def forward(self, pred, target):
                CALLS.append(pred.shape[0])
                return self.loss_weight * (pred - target).abs().pow(self.power).mean()
        """))
    return {"archs": f"{pkg}.archs", "losses": f"{pkg}.losses", "arch": f"ToyNet_{suffix}",
            "loss": f"ToyLoss_{suffix}"}


def _write_pairs(folder: Path, count: int = 2, size: int = 32) -> None:
    import cv2

    rng = np.random.default_rng(0)
    for sub in ("gt", "lq"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        gt = rng.uniform(0.2, 0.8, (size, size, 3))
        lq = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
        cv2.imwrite(str(folder / "gt" / f"{i}.png"), (gt * 255).astype(np.uint8))
        cv2.imwrite(str(folder / "lq" / f"{i}.png"), (lq * 255).astype(np.uint8))


def _options(tmp_path: Path, imports: List[str], arch: str, loss: str) -> dict:
    return {
        "name": "plugin_run",
        "imports": imports,
        "num_gpu": 0,
        "manual_seed": 1,
        "datasets": {"train": {"type": "PairedImageDataset", "dataroot_gt": str(tmp_path / "data" / "gt"),
                               "dataroot_lq": str(tmp_path / "data" / "lq"), "gt_size": 32,
                               "batch_size_per_gpu": 1}},
        "network_g": {"type": arch, "width": 4},
        "path": {"experiments_root": str(tmp_path / "experiments")},
        "train": {"optim_g": {"type": "Adam", "lr": 1e-3}, "total_iter": 2,
                  "losses": {"toy": {"type": loss, "loss_weight": 1.0, "power": 1}}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": False},
    }


def _write_options(tmp_path: Path, opt: dict) -> Path:
    path = tmp_path / "plugin_run.yml"
    path.write_text(yaml.safe_dump(opt, sort_keys=False), encoding="utf-8")
    return path


def test_imports_key_trains_two_iterations_with_a_users_loss_and_network(tmp_path, monkeypatch):
    import sys

    from ddr_restore.train.trainer import train

    names = _write_user_package(tmp_path / "src", _unique("a"))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    _write_pairs(tmp_path / "data")
    opt_file = _write_options(tmp_path, _options(tmp_path, [names["archs"], names["losses"]], names["arch"],
                                                 names["loss"]))
    assert names["losses"] not in sys.modules  # nothing imported it before the option file named it

    logs: Dict[int, Dict[str, float]] = {}
    result = train(parse_options(opt_file), iteration_callback=lambda i, values: logs.__setitem__(i, values))

    assert result.final_iter == 2 and sorted(logs) == [1, 2]
    assert all(np.isfinite(values["toy"]) for values in logs.values())  # the term is logged under its name
    assert sys.modules[names["losses"]].CALLS == [1, 1]  # the user's loss ran once per iteration
    assert result.checkpoint is not None and Path(result.checkpoint).is_file()
    assert plugins.loaded_modules() == [names["archs"], names["losses"]]


def test_unknown_type_lists_the_loaded_plugin_modules(tmp_path, monkeypatch):
    names = _write_user_package(tmp_path / "src", _unique("b"))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    opt_file = _write_options(tmp_path, _options(tmp_path, [names["losses"]], "NAFNet", "ToyLos"))

    with pytest.raises(OptionsError) as err:
        parse_options(opt_file)
    message = str(err.value)
    assert "train.losses.toy.type: unknown loss type 'ToyLos'" in message
    assert f"plugin modules loaded: {names['losses']}" in message
    assert names["loss"] in message  # the user's loss is among the registered names

    with pytest.raises(KeyError) as err:  # the registry's own lookup says the same
        LOSS_REGISTRY.get("ToyLos")
    assert names["losses"] in str(err.value)


def test_unknown_type_without_plugins_says_how_to_add_them(tmp_path):
    opt = _options(tmp_path, [], "NoSuchNet", "L1Loss")
    with pytest.raises(OptionsError, match=r"network_g.type: unknown arch type 'NoSuchNet'.*no plugin modules loaded"
                                           r".*imports:"):
        parse_options(_write_options(tmp_path, opt))


def test_missing_module_is_a_user_error_naming_the_key_and_module(tmp_path, monkeypatch, capsys):
    names = _write_user_package(tmp_path / "src", _unique("c"))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    missing = _unique("no_such_project") + ".losses"
    opt_file = _write_options(tmp_path, _options(tmp_path, [names["archs"], missing], names["arch"], "L1Loss"))

    with pytest.raises(OptionsError) as err:
        parse_options(opt_file)
    assert isinstance(err.value, InputError)
    message = str(err.value)
    assert "imports[1]" in message and repr(missing) in message and "PYTHONPATH" in message
    assert str(opt_file) in message

    # ddr-train: one line, exit status 2, no traceback
    with pytest.raises(SystemExit) as stop:
        train_main(["-opt", str(opt_file)])
    assert stop.value.code == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith("ddr-train: error:") and "imports[1]" in stderr[0]
    assert "Traceback" not in capsys.readouterr().err


def test_module_that_fails_inside_is_reported_with_its_error(tmp_path, monkeypatch):
    name = _unique("broken_plugin")
    (tmp_path / f"{name}.py").write_text("import ddr_restore\nraise RuntimeError('the user code is broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InputError, match=rf"imports\[0\]: importing module '{name}' failed: RuntimeError: the user "
                                         "code is broken"):
        plugins.import_modules([name])
    with pytest.raises(InputError, match=r"imports\[0\]: expected a dotted module name"):
        plugins.import_modules(["not a module"])


def _install_fake_distribution(site: Path, dist: str, entries: Dict[str, str]) -> None:
    """A dist-info folder on sys.path is what importlib.metadata finds for an installed package."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entries.items())
    info.joinpath("entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\n{lines}")


def test_entry_point_group_is_loaded_on_the_first_registry_lookup(tmp_path, monkeypatch):
    suffix = _unique("d")
    names = _write_user_package(tmp_path / "site", suffix)
    broken = _unique("broken_ep")
    (tmp_path / "site" / f"{broken}.py").write_text("raise ImportError('missing dependency of the plugin')\n")
    _install_fake_distribution(tmp_path / "site", f"fake_plugin_{suffix}",
                               {"toy": names["losses"], "bad": broken})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    assert names["loss"] not in LOSS_REGISTRY._objects
    fresh = Registry("gadget", [])  # a first lookup (of any registry) loads the group
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert "anything" not in fresh
    assert names["loss"] in LOSS_REGISTRY  # registered by the entry point's module
    assert names["losses"] in plugins.loaded_modules()
    # a broken plugin warns and is named, but does not stop the others
    assert any(broken in str(w.message) for w in caught)
    with pytest.raises(KeyError) as err:
        LOSS_REGISTRY.get("Nope")
    assert names["losses"] in str(err.value) and f"failed to load: {broken}" in str(err.value)
    assert plugins.load_entry_points() == []  # once per process


def test_ddr_eval_builds_a_users_network_named_by_imports(tmp_path, monkeypatch):
    """The option file saved in the experiment folder keeps `imports:`, so ddr-eval finds the user's network too."""
    import sys

    from ddr_restore.eval.inference import load_restoration_model
    from ddr_restore.train.trainer import train

    names = _write_user_package(tmp_path / "src", _unique("e"))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    _write_pairs(tmp_path / "data")
    opt_file = _write_options(tmp_path, _options(tmp_path, [names["archs"], names["losses"]], names["arch"],
                                                 names["loss"]))
    result = train(parse_options(opt_file))
    saved_options = Path(result.experiment_dir) / "plugin_run.yml"
    del sys.modules[names["archs"]]  # a fresh process: nothing has imported the user's modules yet
    ARCH_REGISTRY._objects.pop(names["arch"])

    net = load_restoration_model(saved_options, result.checkpoint)
    assert type(net).__name__ == "ToyNet"
