"""Training: options, the loop, checkpoints, schedulers, distributed helpers.

Library use::

    from ddr_restore.train import parse_options, train
    result = train(parse_options("options/demo/nafnet_ddr_demo.yml", ["train.total_iter=20"]))
    print(result.checkpoint, result.before_after)
"""
from ddr_restore.train.options import OptionsError, load_options, parse_options, validate_options

__all__ = ["OptionsError", "load_options", "parse_options", "validate_options", "train", "TrainResult",
           "TrainingDivergedError", "TrainingInterrupted"]


def __getattr__(name: str):
    # The trainer pulls in the registries (archs, losses, data); load it only when asked.
    if name in ("train", "TrainResult", "TrainingDivergedError", "TrainingInterrupted", "Trainer"):
        from ddr_restore.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'ddr_restore.train' has no attribute {name!r}")
