"""Image files <-> arrays <-> tensors, with errors that name the file; cheap header checks of image files.

Convention everywhere in ddr_restore: images in memory are **RGB**; numpy arrays are HWC (float32 in [0,1] or
uint8), tensors are (3,H,W) or (B,3,H,W) float in [0,1]. OpenCV (BGR) is used only inside this module.
:func:`read_image_native` gives the stored integers (uint8 or uint16) as an RGB view without any conversion, so
a training loader can crop and flip first and convert only the patch (:func:`img2tensor`, :func:`to_float32`);
the values are the same as those of :func:`read_image` (8-bit scaled by 1/255, 16-bit by 1/65535).

One policy for channels and bit depth, used by the datasets, ``ddr-score`` and ``ddr-eval`` alike:

* files are 8- or 16-bit integer images (16-bit ones are read at full precision and scaled by 1/65535);
  floating-point and 32-bit integer files are refused;
* a greyscale file is refused unless ``gray="replicate"`` (its channel is repeated into R, G and B);
* a file with an alpha channel (RGBA, grey+alpha, or a palette/RGB PNG with a transparency chunk) is refused
  unless ``alpha="drop"`` (the colour channels are kept as they are, not composited).

The switches are called ``gray: replicate`` / ``alpha: drop`` in dataset options and ``--gray replicate`` /
``--alpha drop`` on the command line; a refusal names them (see ``hint`` in :func:`read_image`).

:func:`check_image_header` and :func:`check_image_files` apply the same policy from the file headers alone (no
pixel decoding), and detect truncated files cheaply, so a dataset can check all its files when it is built.
"""
from __future__ import annotations

import os
import re
import struct
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from ddr_restore.errors import InputError, MissingPathError

__all__ = [
    "IMG_EXTENSIONS",
    "GRAY_CHOICES",
    "ALPHA_CHOICES",
    "DATASET_HINT",
    "CLI_HINT",
    "GENERIC_HINT",
    "ImageHeader",
    "ImageProblem",
    "check_policy",
    "read_image",
    "read_image_native",
    "to_float32",
    "read_image_header",
    "check_image_header",
    "scan_image_files",
    "format_problems",
    "check_image_files",
    "summarize_headers",
    "write_image",
    "list_images",
    "img2tensor",
    "tensor2img",
]

PathLike = Union[str, os.PathLike]
IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
GRAY_CHOICES = ("error", "replicate")
ALPHA_CHOICES = ("error", "drop")

# How a user turns the switches on, per context. A refusal ends with the text for its kind ("gray" or "alpha").
DATASET_HINT: Mapping[str, str] = {
    "gray": "gray: replicate in the dataset options",
    "alpha": "alpha: drop in the dataset options",
}
CLI_HINT: Mapping[str, str] = {"gray": "--gray replicate", "alpha": "--alpha drop"}
GENERIC_HINT: Mapping[str, str] = {
    "gray": "gray: replicate in the dataset options, --gray replicate on ddr-score/ddr-eval, "
            "gray='replicate' in Python",
    "alpha": "alpha: drop in the dataset options, --alpha drop on ddr-score/ddr-eval, alpha='drop' in Python",
}
_HINT_LEADS = {
    "gray": "to use greyscale files as RGB (the channel repeated), use ",
    "alpha": "to ignore alpha channels, use ",
}
_SHOW = 5  # problems listed by name in one message


# ---------------------------------------------------------------------------------------------- policy
def check_policy(gray: str, alpha: str, where: str = "") -> None:
    """Raise :class:`InputError` unless ``gray`` is one of ``GRAY_CHOICES`` and ``alpha`` one of ``ALPHA_CHOICES``.

    ``where`` prefixes the key names (``"datasets.train."`` gives ``datasets.train.gray``).
    """
    if gray not in GRAY_CHOICES:
        raise InputError(f"{where}gray must be one of {', '.join(GRAY_CHOICES)}; got {gray!r}")
    if alpha not in ALPHA_CHOICES:
        raise InputError(f"{where}alpha must be one of {', '.join(ALPHA_CHOICES)}; got {alpha!r}")


def _hint_text(kinds: Sequence[str], hint: Optional[Mapping[str, str]]) -> str:
    """``RGB images are expected; to ignore alpha channels, use alpha: drop in the dataset options`` etc."""
    switches = [_HINT_LEADS[k] + ((hint or GENERIC_HINT).get(k) or GENERIC_HINT[k]) for k in kinds]
    return "RGB images are expected; " + "; ".join(switches)


# ---------------------------------------------------------------------------------------------- headers
@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, in the terms of :func:`read_image`.

    Attributes:
        path: the file.
        format: ``"PNG"``, ``"JPEG"``, ``"BMP"``, ``"TIFF"``, ``"WEBP"`` or ``"PPM"`` (from the content, not the
            extension).
        width, height: in pixels.
        channels: channels the decoder yields before the gray/alpha policy: 1 (grey), 3 (colour) or 4 (alpha).
        bit_depth: bits per channel after decoding: 8 or 16 (1/2/4-bit files decode to 8 bits).
        layout: what the channels are, e.g. ``"RGB"``, ``"RGBA"``, ``"grey"``, ``"grey+alpha"``, ``"palette"``,
            ``"palette+transparency"``.
    """

    path: Path
    format: str
    width: int
    height: int
    channels: int
    bit_depth: int
    layout: str

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height)."""
        return self.width, self.height

    def describe(self) -> str:
        """e.g. ``"1280x720 8-bit RGB PNG"``."""
        return f"{self.width}x{self.height} {self.bit_depth}-bit {self.layout} {self.format}"


class ImageProblem(NamedTuple):
    """One unusable file: ``kind`` is ``missing``, ``unreadable``, ``truncated``, ``depth``, ``gray``, ``alpha``
    (or ``size``, added by datasets); ``message`` says what is wrong without the path."""

    path: Path
    kind: str
    message: str


class _Problem(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the whole IEND chunk: length 0, type, CRC
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_TAIL = 65536  # how far before the end of a file a trailing end marker is searched for
_PIL_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "BMP": "BMP", "DIB": "BMP", "TIFF": "TIFF", "WEBP": "WEBP",
                "PPM": "PPM"}
# PIL mode -> (channels after OpenCV decoding, layout, bit depth)
_PIL_MODES = {
    "1": (1, "grey", 8), "L": (1, "grey", 8), "P": (3, "palette", 8),
    "RGB": (3, "RGB", 8), "YCbCr": (3, "YCbCr", 8), "CMYK": (3, "CMYK", 8), "LAB": (3, "Lab", 8),
    "LA": (4, "grey+alpha", 8), "La": (4, "grey+alpha", 8), "PA": (4, "palette+alpha", 8),
    "RGBA": (4, "RGBA", 8), "RGBa": (4, "RGBA", 8),
    "I;16": (1, "grey", 16), "I;16L": (1, "grey", 16), "I;16B": (1, "grey", 16), "I;16N": (1, "grey", 16),
}
_UNREADABLE = "not a readable image: unrecognised format or damaged header"


def _read_exact(fh: BinaryIO, n: int, size: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) < n:
        raise _Problem("truncated", f"truncated {what}: the file ends inside its header ({size} bytes)")
    return data


def _has_end_marker(fh: BinaryIO, size: int, marker: bytes) -> bool:
    """True when ``marker`` ends the file, or appears near its end (some writers append bytes after it)."""
    if size < len(marker):
        return False
    fh.seek(size - len(marker))
    if fh.read(len(marker)) == marker:
        return True
    start = max(0, size - _TAIL)
    fh.seek(start)
    return marker in fh.read(size - start)


def _inspect_png(path: Path, fh: BinaryIO, size: int) -> ImageHeader:
    fh.seek(len(_PNG_SIGNATURE))
    length, ctype = struct.unpack(">I4s", _read_exact(fh, 8, size, "PNG"))
    if ctype != b"IHDR" or length != 13:
        raise _Problem("unreadable", "damaged PNG header (no IHDR chunk after the signature)")
    ihdr = _read_exact(fh, 13, size, "PNG")
    (crc,) = struct.unpack(">I", _read_exact(fh, 4, size, "PNG"))
    if zlib.crc32(b"IHDR" + ihdr) != crc:
        raise _Problem("unreadable", "damaged PNG header (IHDR checksum mismatch)")
    width, height, depth, color, _, _, _ = struct.unpack(">IIBBBBB", ihdr)
    if width == 0 or height == 0 or depth not in _PNG_DEPTHS.get(color, ()):
        raise _Problem("unreadable", f"damaged PNG header ({width}x{height}, colour type {color}, depth {depth})")
    # Chunks before the first IDAT: only their 8-byte headers are read. A tRNS chunk makes OpenCV decode a
    # palette or RGB PNG with an alpha channel (a grey one stays grey), so it changes the channel count.
    transparency = False
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise _Problem("truncated", f"truncated PNG: the file ends before the image data ({size} bytes)")
        length, ctype = struct.unpack(">I4s", head)
        if ctype == b"IDAT":
            break
        if ctype == b"IEND":
            raise _Problem("unreadable", "damaged PNG: no image data (IEND before any IDAT chunk)")
        transparency = transparency or ctype == b"tRNS"
        fh.seek(length + 4, os.SEEK_CUR)  # data + CRC
    # The decoder (libpng via OpenCV) rejects a PNG whose data stops before the IEND chunk; an interrupted copy or
    # download cuts the file anywhere, so the end of the file is where truncation shows without inflating pixels.
    if not _has_end_marker(fh, size, _PNG_IEND):
        raise _Problem("truncated", f"truncated or damaged PNG: the file ({size} bytes) does not end with the IEND "
                                    "chunk (an interrupted copy or download?)")
    if color == 0:
        channels, layout = 1, "grey"
    elif color == 4:
        channels, layout = 4, "grey+alpha"
    elif color == 6:
        channels, layout = 4, "RGBA"
    else:
        base = "RGB" if color == 2 else "palette"
        channels, layout = (4, base + "+transparency") if transparency else (3, base)
    return ImageHeader(path, "PNG", width, height, channels, 16 if depth == 16 else 8, layout)


def _ppm_header(fh: BinaryIO) -> Tuple[bytes, List[int], int]:
    """(magic, [width, height, maxval], header length) of a PNM file; comments are skipped."""
    fh.seek(0)
    head = fh.read(1024)
    magic = head[:2]
    need = 2 if magic in (b"P1", b"P4") else 3
    values: List[int] = []
    end = 2
    for m in re.finditer(rb"#[^\r\n]*|(\S+)", head[2:]):
        if m.group(1) is None:
            continue
        values.append(int(m.group(1)))
        end = 2 + m.end()
        if len(values) == need:
            break
    if len(values) < need:
        raise ValueError("short PNM header")
    if need == 2:
        values.append(1)
    return magic, values, end + 1  # one whitespace byte separates the header from binary data


def _min_data_end(fmt: str, fh: BinaryIO, size: int, pil_info: Mapping[str, object]) -> Optional[int]:
    """The smallest file size the header implies (None when the format gives no cheap bound)."""
    fh.seek(0)
    if fmt == "WEBP":
        head = fh.read(12)
        return struct.unpack("<I", head[4:8])[0] + 8 if head[:4] == b"RIFF" else None
    if fmt == "BMP":
        head = fh.read(54)
        if len(head) < 34 or head[:2] != b"BM":
            return None
        file_size, offset = struct.unpack("<I4xI", head[2:14])
        header_size = struct.unpack("<I", head[14:18])[0]
        if header_size >= 40:
            w, h, _, bpp, compression = struct.unpack("<iiHHI", head[18:34])
            if compression in (0, 3):  # uncompressed: rows padded to 4 bytes
                return offset + ((bpp * abs(w) + 31) // 32) * 4 * abs(h)
        return file_size or None
    if fmt == "PPM":
        magic, (w, h, maxval), header_len = _ppm_header(fh)
        per_row = {b"P4": (w + 7) // 8, b"P5": w, b"P6": 3 * w}.get(magic)
        if per_row is None:  # ASCII variants: no fixed length
            return None
        return header_len + per_row * h * (2 if maxval > 255 else 1)
    if fmt == "TIFF":
        tags = pil_info.get("tiff_tags") or {}
        assert isinstance(tags, Mapping)
        offsets = tags.get(273) or tags.get(324)
        counts = tags.get(279) or tags.get(325)
        if offsets and counts and len(offsets) == len(counts):
            return max(int(o) + int(c) for o, c in zip(offsets, counts))
    return None


def _unparsed(fh: BinaryIO, size: int) -> _Problem:
    """The problem of a file PIL cannot parse, as precise as its first bytes allow."""
    fh.seek(0)
    head = fh.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        if size < struct.unpack("<I", head[4:8])[0] + 8:
            return _Problem("truncated", f"truncated WEBP: {size} bytes, the header describes "
                                         f"{struct.unpack('<I', head[4:8])[0] + 8}")
        return _Problem("unreadable", "damaged WEBP header")
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _Problem("unreadable", "damaged TIFF, or a TIFF variant that is not supported (such as floating-point "
                                      "samples; 8- or 16-bit integer images are expected)")
    if head[:3] == b"\xff\xd8\xff":
        return _Problem("unreadable", "damaged JPEG header")
    return _Problem("unreadable", _UNREADABLE)


def _inspect_pil(path: Path, fh: BinaryIO, size: int) -> ImageHeader:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: nothing is decompressed here
            with Image.open(fh) as im:
                fmt, mode, (width, height) = im.format, im.mode, im.size
                tiff_tags = {k: im.tag_v2.get(k) for k in (258, 273, 279, 324, 325, 339)} if fmt == "TIFF" else {}
    except Exception:  # noqa: BLE001 - PIL raises many types for unparseable headers; all mean the same here
        raise _unparsed(fh, size) from None
    if fmt not in _PIL_FORMATS:
        raise _Problem("unreadable", f"unsupported format {fmt} (PNG, JPEG, BMP, TIFF, WebP or PPM/PGM expected)")
    fmt = _PIL_FORMATS[fmt]
    if mode == "F" or tiff_tags.get(339) and 3 in tuple(tiff_tags[339] or ()):
        raise _Problem("depth", "floating-point pixels; 8- or 16-bit integer images are expected")
    if mode == "I" and fmt == "PPM":
        mode = "I;16"  # PIL reads a 16-bit PGM as 32-bit "I"
    if mode not in _PIL_MODES:
        raise _Problem("depth", f"unsupported pixel format {mode!r}; 8- or 16-bit integer images are expected")
    channels, layout, depth = _PIL_MODES[mode]
    if fmt == "TIFF" and tiff_tags.get(258):
        bits = max(int(b) for b in tiff_tags[258])  # type: ignore[union-attr]
        if bits > 16 or bits not in (1, 2, 4, 8, 16):
            raise _Problem("depth", f"{bits}-bit samples; 8- or 16-bit integer images are expected")
        depth = 16 if bits == 16 else 8
    if fmt == "PPM":
        depth = 16 if _ppm_header(fh)[1][2] > 255 else 8
    if fmt == "JPEG":
        # libjpeg stops with an error at a missing end-of-image marker; the marker may be followed by other data
        # (e.g. a motion photo's video), so when it is not at the very end the decoder decides (rare, slower).
        fh.seek(max(0, size - 2))
        if fh.read(2) != b"\xff\xd9" and _decode(path) is None:
            raise _Problem("truncated", f"truncated or damaged JPEG: no end-of-image marker ({size} bytes)")
    else:
        try:
            end = _min_data_end(fmt, fh, size, {"tiff_tags": tiff_tags})
        except (ValueError, struct.error):
            raise _Problem("unreadable", f"damaged {fmt} header") from None
        if end is not None and size < end:
            raise _Problem("truncated", f"truncated {fmt}: {size} bytes, the header describes {end}")
    return ImageHeader(path, fmt, width, height, channels, depth, layout)


def _inspect(path: Path) -> ImageHeader:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise _Problem("missing", "not a file")
        with open(path, "rb") as fh:
            if fh.read(len(_PNG_SIGNATURE)) == _PNG_SIGNATURE:
                return _inspect_png(path, fh, size)
            if size == 0:
                raise _Problem("unreadable", "empty file (0 bytes)")
            fh.seek(0)
            return _inspect_pil(path, fh, size)
    except FileNotFoundError:
        raise _Problem("missing", "file not found") from None
    except _Problem:
        raise
    except OSError as err:
        raise _Problem("unreadable", f"cannot read the file ({err.strerror or err})") from None


def _policy_problem(header: ImageHeader, gray: str, alpha: str) -> Optional[_Problem]:
    if header.channels == 1 and gray != "replicate":
        return _Problem("gray", f"greyscale image ({header.bit_depth}-bit, 1 channel)")
    if header.channels == 4 and alpha != "drop":
        return _Problem("alpha", f"image with an alpha channel ({header.layout}, {header.bit_depth}-bit)")
    return None


def _decode(path: Path) -> Optional[np.ndarray]:
    data = np.fromfile(str(path), dtype=np.uint8)  # np.fromfile + imdecode also handles non-ASCII paths
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None


def _inspect_with_policy(path: Path, gray: str, alpha: str, decode: bool) -> ImageHeader:
    header = _inspect(path)
    problem = _policy_problem(header, gray, alpha)
    if problem is not None:
        raise problem
    if decode and _decode(path) is None:
        raise _Problem("unreadable", f"the pixel data of this {header.format} cannot be decoded (damaged file)")
    return header


def _single_error(path: Path, problem: _Problem, hint: Optional[Mapping[str, str]]) -> Exception:
    if problem.kind == "missing":
        return MissingPathError(f"image file not found: {path}")
    text = f"{path}: {problem.message}"
    if problem.kind in ("gray", "alpha"):
        text += f"; {_hint_text([problem.kind], hint)}"
    return InputError(text)


def read_image_header(path: PathLike) -> ImageHeader:
    """The header of one image file, without the gray/alpha policy and without decoding pixels.

    Raises:
        MissingPathError: the file does not exist.
        InputError: unrecognised format, damaged header, truncated file, or an unsupported bit depth.
    """
    path = Path(path)
    try:
        return _inspect(path)
    except _Problem as problem:
        raise _single_error(path, problem, None) from None


def check_image_header(
    path: PathLike,
    gray: str = "error",
    alpha: str = "error",
    hint: Optional[Mapping[str, str]] = None,
    decode: bool = False,
) -> ImageHeader:
    """Check that :func:`read_image` would accept ``path`` with these switches, from its header alone.

    The header gives the format, size, channels and bit depth (8 or 16). Truncation is detected from the end of
    the file: a PNG must end with its IEND chunk (as libpng requires), a JPEG with its end-of-image marker, and
    BMP/PPM/TIFF/WebP files must be as long as their header says. Damage inside compressed pixel data is only
    found by decoding: ``decode=True`` decodes the file too (about as slow as reading it).

    Args:
        path: image file.
        gray, alpha: the policy switches of :func:`read_image`.
        hint: how the caller's user sets the switches (see :func:`read_image`).
        decode: also decode the pixels.

    Returns:
        The file's :class:`ImageHeader`.

    Raises:
        MissingPathError: the file does not exist.
        InputError: anything else that :func:`read_image` would refuse; the message names the file.
    """
    check_policy(gray, alpha)
    path = Path(path)
    try:
        return _inspect_with_policy(path, gray, alpha, decode)
    except _Problem as problem:
        raise _single_error(path, problem, hint) from None


def scan_image_files(
    paths: Iterable[PathLike], gray: str = "error", alpha: str = "error", decode: bool = False
) -> Tuple[Dict[Path, ImageHeader], List[ImageProblem]]:
    """Check many files like :func:`check_image_header`, collecting every problem instead of stopping at one.

    Returns ``(headers, problems)``: the headers of the good files (keyed by path; a path listed twice is read
    once) and one :class:`ImageProblem` per bad file, in input order. Nothing is raised for bad files; see
    :func:`check_image_files` for the raising variant and :func:`format_problems` for the message.
    """
    check_policy(gray, alpha)
    headers: Dict[Path, ImageHeader] = {}
    problems: List[ImageProblem] = []
    seen = set()
    for p in paths:
        path = Path(p)
        if path in seen:
            continue
        seen.add(path)
        try:
            headers[path] = _inspect_with_policy(path, gray, alpha, decode)
        except _Problem as problem:
            problems.append(ImageProblem(path, problem.kind, problem.message))
    return headers, problems


_KIND_WORDS = {"missing": "missing", "unreadable": "unreadable", "truncated": "truncated",
               "depth": "unsupported bit depth", "gray": "greyscale", "alpha": "with alpha", "size": "size mismatch",
               "small": "smaller than gt_size"}


def format_problems(
    problems: Sequence[ImageProblem],
    n_files: int,
    what: str = "image files",
    hint: Optional[Mapping[str, str]] = None,
    show: int = _SHOW,
) -> str:
    """One message for many problems: a count by kind, the first ``show`` files with their problem, the hints.

    Example: ``2 of 22 image files cannot be used (1 truncated, 1 with alpha): a.png: truncated ...; b.png: image
    with an alpha channel (RGBA, 8-bit). RGB images are expected; to ignore alpha channels, use alpha: drop ...``
    """
    counts = Counter(p.kind for p in problems)
    by_kind = ", ".join(f"{n} {_KIND_WORDS.get(k, k)}" for k, n in counts.items())
    listed = "; ".join(f"{p.path}: {p.message}" for p in problems[:show])
    if len(problems) > show:
        listed += f"; ... ({len(problems) - show} more)"
    text = f"{len(problems)} of {n_files} {what} cannot be used ({by_kind}): {listed}"
    kinds = [k for k in ("gray", "alpha") if counts.get(k)]
    if kinds:
        text += ". " + _hint_text(kinds, hint)
    return text


def check_image_files(
    paths: Iterable[PathLike],
    gray: str = "error",
    alpha: str = "error",
    hint: Optional[Mapping[str, str]] = None,
    decode: bool = False,
    what: str = "image files",
) -> Dict[Path, ImageHeader]:
    """Check every file like :func:`check_image_header`; report all bad ones in one error.

    Returns:
        The headers of all files, keyed by path.

    Raises:
        MissingPathError: when every problem is a missing file.
        InputError: otherwise; the message counts the problems by kind and names the first files (see
            :func:`format_problems`).
    """
    paths = list(paths)
    headers, problems = scan_image_files(paths, gray=gray, alpha=alpha, decode=decode)
    if problems:
        message = format_problems(problems, len(headers) + len(problems), what=what, hint=hint)
        if all(p.kind == "missing" for p in problems):
            raise MissingPathError(message)
        raise InputError(message)
    return headers


def summarize_headers(headers: Iterable[ImageHeader]) -> str:
    """A short description of many files, e.g. ``"22 files: 22 8-bit RGB PNG; 1280x720"``."""
    headers = list(headers)
    kinds = Counter(f"{h.bit_depth}-bit {h.layout} {h.format}" for h in headers)
    sizes = Counter(f"{h.width}x{h.height}" for h in headers)
    size_text = (", ".join(sizes) if len(sizes) <= 3
                 else f"{len(sizes)} sizes, {min(min(h.size) for h in headers)} px or more on each side")
    return f"{len(headers)} files: " + ", ".join(f"{n} {k}" for k, n in kinds.items()) + f"; {size_text}"


# ---------------------------------------------------------------------------------------------- pixels
def _decode_checked(path: Path, gray: str, alpha: str, hint: Optional[Mapping[str, str]]) -> np.ndarray:
    """The file decoded as OpenCV stores it (uint8/uint16; HW grey, HWx3 BGR or HWx4 BGRA), policy checked."""
    check_policy(gray, alpha)
    if not path.is_file():
        raise MissingPathError(f"image file not found: {path}")
    img = _decode(path)
    if img is None:
        try:
            _inspect(path)
            reason = "corrupt pixel data or an unsupported variant of its format"
        except _Problem as problem:
            reason = problem.message
        raise InputError(f"cannot decode image file {path}: {reason}")
    if img.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path}: {img.dtype} pixels are not supported; 8- or 16-bit integer images are expected")
    channels = 1 if img.ndim == 2 or img.shape[2] == 1 else img.shape[2]
    if channels == 1:
        if gray != "replicate":
            raise InputError(f"{path} is a greyscale (1-channel) image; {_hint_text(['gray'], hint)}")
        return img.reshape(img.shape[0], img.shape[1])
    if channels == 4:
        if alpha != "drop":
            raise InputError(f"{path} has 4 channels (an alpha channel); {_hint_text(['alpha'], hint)}")
    elif channels != 3:
        raise InputError(f"{path} has {channels} channels; RGB images are expected")
    return img


def read_image_native(
    path: PathLike, gray: str = "error", alpha: str = "error", hint: Optional[Mapping[str, str]] = None
) -> np.ndarray:
    """Read an image file as RGB HWC in its stored integer type (uint8 or uint16), without copying the pixels.

    The same files, checks, errors and channel policy as :func:`read_image`; the result is a **view** of the
    decoded buffer: channels reversed from OpenCV's BGR(A) order with a negative stride (the alpha channel of a
    4-channel file left out), and for a greyscale file with ``gray="replicate"`` a read-only broadcast of its one
    channel to three. Crops, flips and transposes of it stay views, so a training loader pays for decoding and
    then converts only its patch (:func:`img2tensor` or :func:`to_float32`, which give exactly the values of
    :func:`read_image`). Copy it (``np.ascontiguousarray``) before writing to it.
    """
    img = _decode_checked(Path(path), gray, alpha, hint)
    if img.ndim == 2:
        return np.broadcast_to(img[:, :, None], (img.shape[0], img.shape[1], 3))
    return img[:, :, 2::-1]  # BGR -> RGB and BGRA -> RGB (alpha dropped) as a view


def _scale(dtype: np.dtype) -> Optional[float]:
    """The divisor that maps an integer image type to [0, 1] (None for a type that is not uint8/uint16)."""
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    return None


def to_float32(img: np.ndarray) -> np.ndarray:
    """A uint8 (/255) or uint16 (/65535) HWC array, any strides, as a new C-contiguous float32 array in [0, 1].

    The division is done in float32, as ``img.astype(np.float32) / 255.0`` does, so the values are bit-identical
    to :func:`read_image`'s; float arrays are returned as contiguous float32 (values unchanged).
    """
    div = _scale(img.dtype)
    if div is None:
        return np.ascontiguousarray(img, dtype=np.float32)
    out = np.empty(img.shape, dtype=np.float32)
    np.divide(img, div, out=out, dtype=np.float32)
    return out


def read_image(
    path: PathLike, gray: str = "error", alpha: str = "error", hint: Optional[Mapping[str, str]] = None
) -> np.ndarray:
    """Read an image file as float32 RGB HWC in [0, 1] (8-bit files scaled by 1/255, 16-bit by 1/65535).

    Args:
        path: image file.
        gray: what to do with a 1-channel image: ``"error"`` (default) or ``"replicate"`` to 3 channels.
        alpha: what to do with a 4-channel image: ``"error"`` (default) or ``"drop"`` the alpha channel.
        hint: how the caller's users set the switches, named in a refusal: ``{"gray": ..., "alpha": ...}``, e.g.
            :data:`DATASET_HINT` (``alpha: drop in the dataset options``) or :data:`CLI_HINT` (``--alpha drop``).
            Default :data:`GENERIC_HINT` names the dataset option, the CLI flag and the Python argument.

    Raises:
        MissingPathError: the file does not exist (a FileNotFoundError).
        InputError: the file cannot be decoded (the reason, e.g. truncation, when the header shows it), has a
            bit depth other than 8 or 16, or a channel layout that was not allowed (a ValueError).

    A loader that crops should use :func:`read_image_native` and convert only the crop (same values, less work).
    """
    img = _decode_checked(Path(path), gray, alpha, hint)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    else:
        # cv2's channel swap of the integer image is several times faster than numpy's strided copy, and a
        # channel permutation commutes with the per-element scaling below.
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    out = img.astype(np.float32)
    out /= _scale(img.dtype)  # in place; the same float32 division as astype(float32) / 255.0
    return out


def write_image(path: PathLike, img: np.ndarray) -> Path:
    """Write an RGB HWC image (uint8, or float in [0,1] which is clamped and rounded); creates parent folders."""
    path = Path(path)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", img)
    if not ok:
        raise InputError(f"cannot encode image for {path} (extension {path.suffix!r})")
    buf.tofile(str(path))
    return path


def list_images(folder: PathLike, recursive: bool = False) -> List[Path]:
    """Sorted image files (by extension) in ``folder``; raises if the folder is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingPathError(f"image folder not found: {folder}")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


def img2tensor(img: np.ndarray) -> torch.Tensor:
    """HWC RGB array -> float32 tensor (3,H,W) in [0,1]: uint8 scaled by 1/255, uint16 by 1/65535, float as is.

    Any strides are accepted (e.g. a flipped crop of :func:`read_image_native`'s view); an integer array is
    converted and laid out as CHW in one pass, with the values :func:`to_float32` / :func:`read_image` give.
    """
    div = _scale(img.dtype)
    if div is None:
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
    out = np.empty((img.shape[2], img.shape[0], img.shape[1]), dtype=np.float32)
    np.divide(img.transpose(2, 0, 1), div, out=out, dtype=np.float32)
    return torch.from_numpy(out)


def tensor2img(tensor: torch.Tensor) -> np.ndarray:
    """(3,H,W) or (1,3,H,W) tensor in [0,1] -> uint8 HWC RGB: clamped to [0,1], x255, rounded (BasicSR semantics)."""
    t = tensor.detach().float().cpu()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"tensor2img expects one image, got a batch of {t.shape[0]}")
        t = t[0]
    arr = t.clamp(0, 1).numpy().transpose(1, 2, 0)  # not in place: never alter the caller's tensor
    return (arr * 255.0).round().astype(np.uint8)
