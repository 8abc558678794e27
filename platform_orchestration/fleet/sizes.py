"""Byte sizes written in the fleet file: ``512MiB``, ``40GiB``, ``2TiB`` (binary units), ``500MB``,
``1.5TB`` (decimal units), or a bare number of bytes.

>>> parse_size("40GiB")
42949672960
>>> format_size(parse_size("1536MiB"))
'1.5GiB'
"""

from __future__ import annotations

import re

__all__ = ["SIZE_HINT", "format_size", "parse_size"]

SIZE_HINT = "expected a size like 512MiB, 40GiB or 2TiB"

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str | int) -> int:
    """``text`` as a whole number of bytes, greater than zero; :class:`ValueError` otherwise."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"{SIZE_HINT}, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.fullmatch(text)
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(f"{SIZE_HINT}, got {text!r}")
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"{SIZE_HINT} (greater than zero), got {text!r}")
    return value


def format_size(size: int) -> str:
    """The largest binary unit that keeps one decimal at most: ``1.5GiB``, ``512MiB``, ``100B``."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{round(size / factor, 1):g}{unit}"
    return f"{size}B"
