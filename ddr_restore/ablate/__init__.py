"""Ablations (``ddr-ablate``): train a grid of option variants × seeds, evaluate each final checkpoint, tabulate.

Library use::

    from ddr_restore.ablate import load_spec, run_ablation
    spec = load_spec("options/demo/nafnet_ddr_demo.yml", grid=["train.ddr_opt.loss_weight=0,0.1,1"], seeds="0,1")
    result = run_ablation(spec, out_dir="ablations/demo")
    print(result.reports["md"])

See :mod:`ddr_restore.ablate.grid` (what runs), :mod:`ddr_restore.ablate.runner` (how, and what is skipped or
resumed) and :mod:`ddr_restore.ablate.report` (results.csv, results.md, plots).
"""
from ddr_restore.ablate.grid import AblationSpec, Axis, Cell, load_grid_file, load_spec
from ddr_restore.ablate.runner import AblationInterrupted, AblationResult, run_ablation, run_cell

__all__ = ["AblationSpec", "Axis", "Cell", "load_grid_file", "load_spec", "run_ablation", "run_cell",
           "AblationResult", "AblationInterrupted"]
