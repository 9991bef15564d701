"""Datasets. Importing this package registers the built-in datasets in DATASET_REGISTRY."""
from __future__ import annotations

import copy
from typing import Any, Mapping

from ddr_restore.data import paired, synthetic  # noqa: F401  (registration side effects)
from ddr_restore.data.paired import PairedImageDataset
from ddr_restore.data.realsr import RealSRPairedDataset  # noqa: F401  (registers the RealSR/DRealSR dataset)
from ddr_restore.data.sr_synthetic import SyntheticSRDataset  # registers the on-the-fly SR dataset
from ddr_restore.data.synthetic import SyntheticMotionBlurDataset
from ddr_restore.errors import InputError, MissingPathError, OptionTypeError
from ddr_restore.registry import DATASET_REGISTRY

__all__ = ["LOADER_KEYS", "build_dataset", "PairedImageDataset", "SyntheticMotionBlurDataset", "SyntheticSRDataset"]

# Keys of a `datasets.<phase>` section that configure the DataLoader / trainer, not the dataset itself.
LOADER_KEYS = (
    "batch_size_per_gpu",
    "num_worker_per_gpu",
    "dataset_enlarge_ratio",
    "prefetch_mode",
    "pin_memory",
    "persistent_workers",
    "use_shuffle",
    "mini_batch_sizes",
    "gt_sizes",
    "iters",
)


def build_dataset(opt: Mapping[str, Any], phase: str) -> Any:
    """Build the dataset of one ``datasets.<phase>`` option section.

    Loader keys (``LOADER_KEYS``) and any ``phase`` key already in ``opt`` are dropped; the dataset gets
    ``phase="train"`` when ``phase`` is ``"train"`` and ``"val"`` for every other section (``val``, ``val_1``,
    ``test_GoPro``, ...). ``opt`` is not modified. Errors name the option path ``datasets.<phase>``; data problems
    found while building (missing folders, unpaired or bad files) raise ``InputError``/``MissingPathError``.
    """
    if not isinstance(opt, Mapping):
        raise OptionTypeError(f"datasets.{phase}: expected a mapping of dataset options, got {type(opt).__name__}")
    cfg = {k: copy.deepcopy(v) for k, v in opt.items() if k not in LOADER_KEYS and k != "phase"}
    dataset_phase = "train" if phase == "train" else "val"
    try:
        return DATASET_REGISTRY.build(cfg, where=f"datasets.{phase}", phase=dataset_phase)
    except OptionTypeError:  # the registry's message already starts with datasets.<phase>
        raise
    except (InputError, MissingPathError) as err:
        raise type(err)(f"datasets.{phase}: {err}") from err
