"""Units on the command line: one parser each for latencies, durations, counts and byte sizes.

Every flag of every CLI that takes a quantity goes through these (see ``search.core.cli``):

| kind | examples | result | a bare number |
| --- | --- | --- | --- |
| latency | ``5ms``, ``0.005s``, ``800us`` | milliseconds | rejected (a unit is required) |
| duration | ``90s``, ``30m``, ``2h``, ``1h30m``, ``500ms`` | seconds | seconds |
| count | ``600M``, ``1.2G``, ``600000000`` | an integer (k, M, G, T = 10^3, 10^6, ...) | itself |
| size | ``10M``, ``2G``, ``512k``, ``10MiB`` | bytes (k, M, G, T = 2^10, 2^20, ...) | bytes |

Each kind has a documented range (:data:`MAX_LATENCY_MS`, :data:`MAX_DURATION_S`,
:data:`MAX_COUNT`, :data:`MAX_SIZE`): NaN, infinities, values that overflow a float and
values beyond the limit are refused in one line, like a missing unit.
"""

from __future__ import annotations

import math
import re

from search.core.errors import NasdeployError

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?"
_LATENCY_UNITS = {"ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3, "μs": 1e-3}
_COUNT_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*"
_DURATION_UNITS = {
    "": 1.0, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0,
    "h": 3600.0, "hr": 3600.0, "d": 86400.0,
}
_SIZE_SUFFIXES = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}

MIN_LATENCY_MS = 1e-6
"""Smallest latency accepted (one nanosecond), in milliseconds."""
MAX_LATENCY_MS = 3_600_000.0
"""Largest latency accepted (one hour), in milliseconds."""
MAX_DURATION_S = 366 * 86400.0
"""Longest duration accepted (a year), in seconds."""
MAX_COUNT = 10**18
"""Largest count accepted (a million T-MACs)."""
MAX_SIZE = 2**40
"""Largest byte size accepted (1 TiB)."""


class BudgetError(NasdeployError, ValueError):
    """A quantity that cannot be parsed (a ``NasdeployError`` and a ``ValueError``)."""



def _show(text: str) -> str:
    """``text`` quoted for a message, shortened to 40 characters."""
    shown = repr(str(text))
    return shown if len(shown) <= 40 else shown[:36] + "...'"


def _number(mantissa: str, exponent: str | None) -> float:
    """``mantissa`` times ten to ``exponent``: ``inf`` or ``0.0`` where a float cannot hold it."""
    return float(f"{mantissa}e{exponent}" if exponent else mantissa)


def parse_latency(text: str) -> float:
    """Parse a latency such as ``"5ms"``, ``"5 ms"``, ``"0.005s"`` or ``"800us"``.

    Args:
        text: a positive number followed by a unit (``ms``, ``s``, ``us`` or ``µs``).

    Returns:
        The latency in milliseconds.

    Raises:
        BudgetError: on a missing or unknown unit, or a value outside 1 ns .. 1 h.
    """
    match = re.fullmatch(rf"\s*{_NUMBER}\s*(ms|s|us|µs|μs)\s*", str(text))
    if match is None:
        raise BudgetError(
            f"cannot read latency {_show(text)}: use a number with a unit, e.g. 5ms, 0.005s or 800us"
        )
    value = _number(match.group(1), match.group(2)) * _LATENCY_UNITS[match.group(3)]
    if value <= 0:
        raise BudgetError(f"latency budget must be positive, got {_show(text)}")
    if not MIN_LATENCY_MS <= value <= MAX_LATENCY_MS:  # also inf (an overflowing exponent)
        raise BudgetError(f"latency {_show(text)} is out of range: use 1ns to 1h (e.g. 5ms)")
    return value


def parse_count(text: str) -> int:
    """Parse a MAC/FLOP count such as ``"600M"``, ``"1.2G"``, ``"600000000"`` or ``"600 MFLOPs"``.

    Suffixes ``k``, ``M``, ``G``, ``T`` (case-insensitive) are decimal multipliers; an optional
    trailing ``FLOPs``/``MACs`` word is ignored.

    Raises:
        BudgetError: on anything else, or a value outside 1 .. :data:`MAX_COUNT`.
    """
    pattern = rf"\s*{_NUMBER}\s*([kKmMgGtT]?)\s*(?:flops?|macs?)?\s*"
    match = re.fullmatch(pattern, str(text), flags=re.IGNORECASE)
    if match is None:
        raise BudgetError(f"cannot read count {_show(text)}: use e.g. 600M, 1.2G or 600000000")
    value = _number(match.group(1), match.group(2)) * _COUNT_SUFFIXES[match.group(3).lower()]
    if not math.isfinite(value) or value > MAX_COUNT:
        raise BudgetError(f"count {_show(text)} is out of range: at most {MAX_COUNT:.0e} (1000000T)")
    if value < 1:
        raise BudgetError(f"count budget must be at least 1, got {_show(text)}")
    return int(round(value))


def parse_duration(text: str) -> float:
    """Parse a duration such as ``"30m"``, ``"2h"``, ``"1h30m"``, ``"90s"`` or ``"45"`` (seconds).

    Returns:
        The duration in seconds.

    Raises:
        BudgetError: on an unknown unit, or a duration that is not positive or longer than a year.
    """
    cleaned = str(text).strip().lower()
    valid = re.fullmatch(rf"(?:{_DURATION_PART})+", cleaned) is not None
    parts = re.findall(_DURATION_PART, cleaned) if valid else []
    units = [unit for _, unit in parts]
    unknown = any(unit not in _DURATION_UNITS for unit in units)
    if not parts or unknown or (len(parts) > 1 and "" in units):
        raise BudgetError(f"cannot read duration {_show(text)}: use e.g. 500ms, 90s, 30m, 2h or 1h30m")
    seconds = sum(float(value) * _DURATION_UNITS[unit] for value, unit in parts)
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise BudgetError(f"duration {_show(text)} is out of range: at most 366d (a year)")
    if seconds <= 0:
        raise BudgetError(f"duration must be positive, got {_show(text)}")
    return seconds


def parse_size(text: str) -> int:
    """Parse a byte size such as ``"10M"``, ``"512k"``, ``"2G"``, ``"10MiB"`` or ``"1048576"``.

    Suffixes are binary (``k`` = 1024 bytes, ``M`` = 1024**2, ...), with an optional ``B``
    or ``iB``; a bare number is bytes.

    Raises:
        BudgetError: on anything else, or a size below one byte or above 1 TiB.
    """
    match = re.fullmatch(rf"\s*{_NUMBER}\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
    if match is None:
        raise BudgetError(f"cannot read size {_show(text)}: use e.g. 512k, 10M, 2G or 1048576 (bytes)")
    value = _number(match.group(1), match.group(2)) * _SIZE_SUFFIXES[match.group(3).lower()]
    if not math.isfinite(value) or value > MAX_SIZE:
        raise BudgetError(f"size {_show(text)} is out of range: at most 1T (1 TiB)")
    if value < 1:
        raise BudgetError(f"size must be at least 1 byte, got {_show(text)}")
    return int(round(value))
