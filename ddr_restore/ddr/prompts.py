"""The official DDR prompt pairs (eezkni/DDR, ``DDR_pytorch/DDR.py``), word for word.

Each degradation type ``d`` has a clean prompt P_d^+ and a degraded prompt P_d^-; the text-driven degradation
direction is ``encode_text(P_d^-) - encode_text(P_d^+)``. The wording is kept exactly as released, including the
ungrammatical "A unnatural": any change moves the CLIP text embedding and therefore the scores.
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple, Union

from ddr_restore.errors import InputError

__all__ = ["PROMPTS", "DEFAULT_DEGRADATIONS", "ALL_DEGRADATIONS", "resolve_degradations"]

#: type -> (clean/positive prompt, degraded/negative prompt)
PROMPTS: Dict[str, Tuple[str, str]] = {
    "color": ("A real color photo with high-quality.", "A unnatural color photo with low-quality."),
    "noise": ("A clean photo with high-quality.", "A noise degraded photo with low-quality."),
    "blur": ("A sharp photo with high-quality.", "A blurry photo with low-quality."),
    "exposure": ("A natural exposure photo with high-quality.", "A unnatural exposure photo with low-quality."),
    "content": ("A clear content photo with high-quality.", "A bad content photo with low-quality."),
}

#: The types the official code uses by default ("content" is defined there but off by default).
DEFAULT_DEGRADATIONS: Tuple[str, ...] = ("blur", "color", "noise", "exposure")
ALL_DEGRADATIONS: Tuple[str, ...] = tuple(PROMPTS)


def resolve_degradations(degradations: Union[str, Iterable[str]]) -> Tuple[str, ...]:
    """Validate a degradation-type selection and return it as a tuple (order kept, duplicates removed).

    Accepts one name, a comma-separated string (``"blur,noise"``) or an iterable of names.

    Raises:
        InputError (a ValueError): empty selection or an unknown type (the message lists the valid types).
    """
    if isinstance(degradations, str):
        names = [n.strip() for n in degradations.split(",")]
    else:
        try:
            names = [str(n).strip() for n in degradations]
        except TypeError:
            raise InputError(f"degradations must be a name or a list of names, got {degradations!r}") from None
    names = [n for n in names if n]
    if not names:
        raise InputError(f"degradations is empty; choose from {', '.join(ALL_DEGRADATIONS)}")
    unknown = [n for n in names if n not in PROMPTS]
    if unknown:
        bad = ", ".join(repr(u) for u in unknown)
        raise InputError(f"unknown degradation type(s) {bad}; valid types: {', '.join(ALL_DEGRADATIONS)}")
    return tuple(dict.fromkeys(names))
