"""Units on the command line: one parser each for latencies, durations, counts and byte sizes.

Every flag of every CLI that takes a quantity goes through these (see ``search.core.cli``):

| kind | examples | result | a bare number |
| --- | --- | --- | --- |
| latency | ``5ms``, ``0.005s``, ``800us`` | milliseconds | rejected (a unit is required) |
| duration | ``90s``, ``30m``, ``2h``, ``1h30m``, ``500ms`` | seconds | seconds |
| count | ``600M``, ``1.2G``, ``600000000`` | an integer (k, M, G, T = 10^3, 10^6, ...) | itself |
| size | ``10M``, ``2G``, ``512k``, ``10MiB`` | bytes (k, M, G, T = 2^10, 2^20, ...) | bytes |
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


class BudgetError(NasdeployError, ValueError):
    """A quantity that cannot be parsed (a ``NasdeployError`` and a ``ValueError``)."""


UnitError = BudgetError
"""The same error under the name that fits flags that are not budgets."""


def _number(mantissa: str, exponent: str | None) -> float:
    return float(mantissa) * (10.0 ** int(exponent) if exponent else 1.0)


def parse_latency(text: str) -> float:
    """Parse a latency such as ``"5ms"``, ``"5 ms"``, ``"0.005s"`` or ``"800us"``.

    Args:
        text: a positive number followed by a unit (``ms``, ``s``, ``us`` or ``µs``).

    Returns:
        The latency in milliseconds.

    Raises:
        BudgetError: on a missing or unknown unit, or a value that is not positive.
    """
    match = re.fullmatch(rf"\s*{_NUMBER}\s*(ms|s|us|µs|μs)\s*", str(text))
    if match is None:
        raise BudgetError(
            f"cannot read latency {text!r}: use a number with a unit, e.g. 5ms, 0.005s or 800us"
        )
    value = _number(match.group(1), match.group(2)) * _LATENCY_UNITS[match.group(3)]
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"latency budget must be positive, got {text!r}")
    return value


def parse_count(text: str) -> int:
    """Parse a MAC/FLOP count such as ``"600M"``, ``"1.2G"``, ``"600000000"`` or ``"600 MFLOPs"``.

    Suffixes ``k``, ``M``, ``G``, ``T`` (case-insensitive) are decimal multipliers; an optional
    trailing ``FLOPs``/``MACs`` word is ignored.

    Raises:
        BudgetError: on anything else, or a value that is not positive.
    """
    pattern = rf"\s*{_NUMBER}\s*([kKmMgGtT]?)\s*(?:flops?|macs?)?\s*"
    match = re.fullmatch(pattern, str(text), flags=re.IGNORECASE)
    if match is None:
        raise BudgetError(f"cannot read count {text!r}: use e.g. 600M, 1.2G or 600000000")
    value = _number(match.group(1), match.group(2)) * _COUNT_SUFFIXES[match.group(3).lower()]
    if not math.isfinite(value) or value < 1:
        raise BudgetError(f"count budget must be at least 1, got {text!r}")
    return int(round(value))


def parse_duration(text: str) -> float:
    """Parse a duration such as ``"30m"``, ``"2h"``, ``"1h30m"``, ``"90s"`` or ``"45"`` (seconds).

    Returns:
        The duration in seconds.

    Raises:
        BudgetError: on an unknown unit or a duration that is not positive.
    """
    cleaned = str(text).strip().lower()
    valid = re.fullmatch(rf"(?:{_DURATION_PART})+", cleaned) is not None
    parts = re.findall(_DURATION_PART, cleaned) if valid else []
    units = [unit for _, unit in parts]
    unknown = any(unit not in _DURATION_UNITS for unit in units)
    if not parts or unknown or (len(parts) > 1 and "" in units):
        raise BudgetError(f"cannot read duration {text!r}: use e.g. 500ms, 90s, 30m, 2h or 1h30m")
    seconds = sum(float(value) * _DURATION_UNITS[unit] for value, unit in parts)
    if seconds <= 0:
        raise BudgetError(f"duration must be positive, got {text!r}")
    return seconds


def parse_size(text: str) -> int:
    """Parse a byte size such as ``"10M"``, ``"512k"``, ``"2G"``, ``"10MiB"`` or ``"1048576"``.

    Suffixes are binary (``k`` = 1024 bytes, ``M`` = 1024**2, ...), with an optional ``B``
    or ``iB``; a bare number is bytes.

    Raises:
        BudgetError: on anything else, or a size below one byte.
    """
    match = re.fullmatch(rf"\s*{_NUMBER}\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
    if match is None:
        raise BudgetError(f"cannot read size {text!r}: use e.g. 512k, 10M, 2G or 1048576 (bytes)")
    value = _number(match.group(1), match.group(2)) * _SIZE_SUFFIXES[match.group(3).lower()]
    if not math.isfinite(value) or value < 1:
        raise BudgetError(f"size must be at least 1 byte, got {text!r}")
    return int(round(value))
