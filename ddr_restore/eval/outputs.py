"""The results folder of ``ddr-eval``: earlier results are archived or replaced, never mixed with new ones.

An output folder that already holds results is moved to ``<out>_archived_<YYYYmmdd_HHMMSS>`` first (as the trainer
does with experiment folders), or, with ``overwrite``, its previous results are deleted. A folder holding files
ddr-eval does not write is left alone (the run stops and says so), and so is one that contains the working
directory or a file the run reads.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

from ddr_restore.errors import InputError

__all__ = ["RESULT_ENTRIES", "check_out_dir", "prepare_out_dir"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
# What ddr-eval writes in its output folder; only a folder holding nothing else is archived or replaced.
RESULT_ENTRIES = ("per_image.csv", "summary.json", "images", "grid")


def _timestamp() -> str:
    return time.strftime("%Y%m%d_%H%M%S")


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def check_out_dir(out: Path, used_paths: Sequence[Optional[PathLike]]) -> bool:
    """Whether ``out`` holds earlier results that must be archived or replaced; errors when that is unsafe.

    Unsafe: ``out`` is a file, holds anything ddr-eval does not write (it may be a folder the user keeps other
    things in), contains the working directory, or contains a file this run reads (``--restored``, the data, the
    option file, the checkpoint), which archiving or replacing would take away.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise InputError(f"output folder {out} is a file; choose another --out")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return False
    foreign = [e for e in entries if e not in RESULT_ENTRIES]
    if foreign:
        shown = ", ".join(foreign[:8]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 8 else "")
        raise InputError(
            f"output folder {out} exists and holds files ddr-eval does not write ({shown}); ddr-eval only archives "
            f"or replaces its own results ({', '.join(RESULT_ENTRIES)}): choose another --out"
        )
    absolute = out.resolve()
    if _is_within(Path.cwd(), absolute):
        raise InputError(f"output folder {out} holds earlier results and contains the working directory; "
                         f"run ddr-eval from elsewhere or choose another --out")
    for used in used_paths:
        if used is not None and _is_within(Path(used), absolute):
            raise InputError(f"{used} lies inside the output folder {out}, whose earlier results this run would "
                             f"archive or replace; choose another --out")
    return True


def prepare_out_dir(out: Path, holds_results: bool, overwrite: bool) -> Optional[Dict[str, str]]:
    """Make ``out`` ready for new results; returns what was done with earlier ones (``None``: there were none).

    Earlier results are moved to ``<out>_archived_<timestamp>`` (a new name, never an existing archive) or,
    with ``overwrite``, deleted; either way no stale image or grid stays next to the new summary.
    """
    previous = None
    if holds_results and overwrite:
        for name in RESULT_ENTRIES:
            entry = out / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
        previous = {"action": "replaced", "folder": str(out)}
        message = f"--overwrite: deleted the previous results in {out}"
    elif holds_results:
        # check_out_dir refused '.', '..' and any folder holding the working directory, so out.name is a name.
        target = out.with_name(f"{out.name}_archived_{_timestamp()}")
        n = 1
        while target.exists() or target.is_symlink():  # two runs within one second: never overwrite an archive
            target = out.with_name(f"{out.name}_archived_{_timestamp()}_{n}")
            n += 1
        os.replace(out, target)
        previous = {"action": "archived", "folder": str(out), "moved_to": str(target)}
        message = f"previous results in {out} moved to {target} (--overwrite replaces them instead)"
    if previous is not None:
        logger.info(message)
        print(f"[ddr-eval] {message}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    return previous
