"""Human-written durations used in the fleet file: ``90s``, ``30m``, ``6h``, ``1d``, ``2w``, ``1h30m``.

A duration is one or more ``<number><unit>`` parts with units ``w`` (weeks), ``d`` (days),
``h`` (hours), ``m`` (minutes) and ``s`` (seconds), largest unit first, each unit at most once.
A bare integer (or a string of digits, as produced by ``${VAR}`` interpolation) is a number of
seconds. Every duration must be greater than zero.

>>> parse_duration("1h30m")
datetime.timedelta(seconds=5400)
>>> format_duration(parse_duration("1h30m"))
'1h30m'
"""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["DURATION_HINT", "parse_duration", "format_duration"]

DURATION_HINT = "expected a duration like 30m, 6h, 1d or 2w"

_SECONDS_PER_UNIT: dict[str, int] = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
# Units must appear largest first and at most once, so "30m1h" and "1h1h" are rejected as typos.
_DURATION_PATTERN = re.compile(
    r"(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?"
)


def parse_duration(text: str | int) -> timedelta:
    """Parse ``text`` into a positive :class:`~datetime.timedelta`.

    Raises :class:`ValueError` with a message starting with :data:`DURATION_HINT` for anything
    that is not a duration or is not greater than zero.

    >>> parse_duration("90s")
    datetime.timedelta(seconds=90)
    >>> parse_duration("2w") == timedelta(weeks=2)
    True
    >>> parse_duration("1d12h") == timedelta(days=1, hours=12)
    True
    >>> parse_duration(3600)
    datetime.timedelta(seconds=3600)
    >>> parse_duration("soon")
    Traceback (most recent call last):
    ...
    ValueError: expected a duration like 30m, 6h, 1d or 2w, got 'soon'
    >>> parse_duration("5 parsecs")
    Traceback (most recent call last):
    ...
    ValueError: expected a duration like 30m, 6h, 1d or 2w, got '5 parsecs'
    >>> parse_duration("0s")
    Traceback (most recent call last):
    ...
    ValueError: expected a duration like 30m, 6h, 1d or 2w greater than zero, got '0s'
    """
    # bool is an int subclass; `rpo: true` is a mistake, not one second.
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"{DURATION_HINT}, got {text!r}")
    if isinstance(text, int):
        seconds = text
    else:
        stripped = text.strip()
        if stripped.isdigit():
            seconds = int(stripped)
        else:
            match = _DURATION_PATTERN.fullmatch(stripped)
            if match is None or not stripped:
                raise ValueError(f"{DURATION_HINT}, got {text!r}")
            seconds = sum(
                int(amount) * _SECONDS_PER_UNIT[unit]
                for unit, amount in match.groupdict().items()
                if amount is not None
            )
    if seconds <= 0:
        raise ValueError(f"{DURATION_HINT} greater than zero, got {text!r}")
    return timedelta(seconds=seconds)


def format_duration(duration: timedelta) -> str:
    """Format ``duration`` in the fleet-file notation, largest units first.

    The result parses back to the same value for every whole-second duration. Sub-second parts
    are rounded to the nearest second; negative durations raise :class:`ValueError`.

    >>> format_duration(timedelta(seconds=5400))
    '1h30m'
    >>> format_duration(timedelta(days=7))
    '1w'
    >>> format_duration(timedelta(days=1, seconds=1))
    '1d1s'
    >>> format_duration(timedelta(0))
    '0s'
    """
    total_seconds = round(duration.total_seconds())
    if total_seconds < 0:
        raise ValueError(f"cannot format a negative duration: {duration!r}")
    if total_seconds == 0:
        return "0s"
    parts: list[str] = []
    remaining = total_seconds
    for unit, unit_seconds in _SECONDS_PER_UNIT.items():
        amount, remaining = divmod(remaining, unit_seconds)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)
