"""What the build-time file check of the datasets costs, against full decoding of the same files.

    python scripts/bench_header_check.py [--data DIR] [--n 3000] [--make crops|copies] [--crop 256] [--cold]

Measures, per file (ms/file) and in total (s), on two sets: the images found under ``--data`` (default: the
gopro_mini pairs in ../shared/data, 22 files of 1280x720) and ``--n`` generated PNGs written to a temporary folder
(random ``--crop`` crops of those images, or byte copies with ``--make copies``), which is removed afterwards:

* ``pil_size``: PIL ``Image.open(p).size``, the size-only check the datasets used before;
* ``check_header``: :func:`ddr_restore.imageio.check_image_header`, the check datasets run now (PNG chunk headers
  up to the image data + the IEND chunk at the end of the file; PIL header + end-of-file checks for other formats);
* ``pil_verify``: PIL ``verify()``, which reads the whole file and checks the CRC of every PNG chunk;
* ``decode``: :func:`ddr_restore.imageio.read_image`, a full decode to float RGB (what loading an item costs);
* ``dataset_build``: building :class:`PairedImageDataset` on ``--data`` with ``check_files`` on and off.

Each method runs once as warm-up (``decode`` follows ``pil_verify``, which has read every file whole), then the
median of ``--repeats`` passes is reported (the files are in the page cache: warm). With ``--cold`` every file is
dropped from the page cache (``posix_fadvise(DONTNEED)``) before each pass, so the time includes reading from disk,
as in a first epoch on a fresh machine (a virtual machine's host may still cache the disk).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from ddr_restore.imageio import check_image_header, list_images, read_image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "gopro_mini" / "train"


def _evict(paths: Sequence[Path]) -> None:
    """Drop the files from the page cache (no root needed; a hint the kernel honours for clean pages)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _pil_size(p: Path) -> None:
    with Image.open(p) as im:
        im.size  # noqa: B018 - the header parse is the point


def _pil_verify(p: Path) -> None:
    with Image.open(p) as im:
        im.verify()


METHODS: Dict[str, Callable[[Path], object]] = {
    "pil_size": _pil_size,
    "check_header": check_image_header,
    "pil_verify": _pil_verify,
    "decode": read_image,
}


def _time_pass(fn: Callable[[], object], paths: Sequence[Path], cold: bool, repeats: int, warmup: bool = True) -> float:
    """Median seconds of ``fn()`` over ``repeats`` passes after one warm-up (cold: files evicted before each)."""
    if warmup:
        fn()
    times: List[float] = []
    for _ in range(repeats):
        if cold:
            _evict(paths)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_files(label: str, paths: Sequence[Path], repeats: int, decode_repeats: int, cold: bool) -> List[dict]:
    """Time every method on ``paths``; print and return one row per method."""
    rows = []
    for name, method in METHODS.items():
        def run(method: Callable[[Path], object] = method) -> None:
            for p in paths:
                method(p)

        # pil_verify has just read every file whole, so the slow decode needs no warm-up pass of its own
        secs = _time_pass(run, paths, cold, decode_repeats if name == "decode" else repeats, warmup=name != "decode")
        rows.append({"set": label, "files": len(paths), "method": name, "ms_per_file": secs * 1e3 / len(paths),
                     "total_s": secs, "cache": "cold" if cold else "warm"})
        print(f"{label:<28} {len(paths):>6} {name:<14} {secs * 1e3 / len(paths):>10.4f} {secs:>10.3f}", flush=True)
    return rows


def bench_dataset(root: Path, repeats: int, cold: bool) -> List[dict]:
    """Building PairedImageDataset on ``root/input`` + ``root/target`` with the file check on and off."""
    from ddr_restore.data.paired import PairedImageDataset

    if not ((root / "input").is_dir() and (root / "target").is_dir()):
        return []
    files = list_images(root / "input") + list_images(root / "target")
    rows = []
    for check in ("header", "off"):
        secs = _time_pass(lambda: PairedImageDataset(root / "input", root / "target", phase="val", check_files=check),
                          files, cold, repeats)
        rows.append({"set": f"dataset_build {root.name}", "files": len(files), "method": f"check_files={check}",
                     "ms_per_file": secs * 1e3 / len(files), "total_s": secs, "cache": "cold" if cold else "warm"})
        print(f"{'dataset_build ' + root.name:<28} {len(files):>6} {'check=' + check:<14} "
              f"{secs * 1e3 / len(files):>10.4f} {secs:>10.3f}", flush=True)
    return rows


def make_files(sources: Sequence[Path], folder: Path, n: int, mode: str, crop: int, seed: int) -> List[Path]:
    """``n`` PNGs in ``folder``: random ``crop`` x ``crop`` crops of the sources (re-encoded) or byte copies."""
    rng = np.random.default_rng(seed)
    images = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sources] if mode == "crops" else []
    out = []
    for i in range(n):
        dst = folder / f"{i:05d}.png"
        k = i % len(sources)
        if mode == "copies":
            shutil.copyfile(sources[k], dst)
        else:
            img = images[k]
            top = int(rng.integers(0, img.shape[0] - crop + 1))
            left = int(rng.integers(0, img.shape[1] - crop + 1))
            assert cv2.imwrite(str(dst), img[top : top + crop, left : left + crop])
        out.append(dst)
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the benchmark; print a table (and write ``--json``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of images (searched recursively)")
    p.add_argument("--n", type=int, default=3000, help="number of generated files (0: none)")
    p.add_argument("--make", choices=("crops", "copies"), default="crops")
    p.add_argument("--crop", type=int, default=256, help="crop size for --make crops")
    p.add_argument("--tmp", type=Path, default=None, help="where to write the generated files (default: a temp dir)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-repeats", type=int, default=1, help="passes of the (slow) full decode")
    p.add_argument("--cold", action="store_true", help="evict the files from the page cache before each pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    if not args.data.is_dir():
        raise SystemExit(f"data folder not found: {args.data} (pass --data)")
    sources = list_images(args.data, recursive=True)
    if not sources:
        raise SystemExit(f"no images under {args.data}")
    print(f"cv2 threads {cv2.getNumThreads()}, {os.cpu_count()} CPUs; cache: {'cold' if args.cold else 'warm'}; "
          f"median of {args.repeats} passes ({args.decode_repeats} for decode) after one warm-up")
    print(f"{'set':<28} {'files':>6} {'method':<14} {'ms/file':>10} {'total s':>10}")
    rows = bench_files(args.data.name, sources, args.repeats, args.decode_repeats, args.cold)
    rows += bench_dataset(args.data, args.repeats, args.cold)
    if args.n > 0:
        tmp = Path(tempfile.mkdtemp(prefix="bench_header_", dir=args.tmp))
        try:
            start = time.perf_counter()
            files = make_files(sources, tmp, args.n, args.make, args.crop, args.seed)
            size_mb = sum(f.stat().st_size for f in files) / 2**20
            label = f"{args.n} {args.make}" + (f" {args.crop}px" if args.make == "crops" else "")
            print(f"# wrote {len(files)} files ({size_mb:.0f} MiB) in {time.perf_counter() - start:.1f} s", flush=True)
            rows += bench_files(label, files, args.repeats, args.decode_repeats, args.cold)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
