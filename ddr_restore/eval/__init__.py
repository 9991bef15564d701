"""Evaluation: full-resolution inference (padding, TLC, tiles) and scoring with the metric catalog.

Modules: :mod:`.evaluate` (:func:`evaluate`, the library entry point, and its config), :mod:`.presets` (test-set
layouts, pairing through the data package), :mod:`.report` (CSV, summary, grids), :mod:`.outputs` (the results
folder), :mod:`.inference` (running a network), :mod:`.entry` (the ``ddr-eval`` command line).
Heavy parts (archs, LPIPS, CLIP) are imported only when used.
"""
from ddr_restore.eval.entry import main
from ddr_restore.eval.evaluate import EvalConfig, Network, Outputs, TestSet, evaluate
from ddr_restore.eval.inference import load_restoration_model, restore

__all__ = ["evaluate", "EvalConfig", "TestSet", "Network", "Outputs", "main", "load_restoration_model", "restore"]
