"""Evaluation: full-resolution inference (padding, TLC, tiles) and the ``ddr-eval`` entry point.

Heavy parts (archs, metrics, LPIPS, CLIP) are imported only when used.
"""
from ddr_restore.eval.evaluate import evaluate, main
from ddr_restore.eval.inference import load_restoration_model, restore

__all__ = ["evaluate", "main", "load_restoration_model", "restore"]
