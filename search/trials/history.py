"""The trial history: ``trials.jsonl``, one JSON object per evaluated candidate.

Lines are appended with flush + fsync, so a finished trial survives a kill. A kill
in the middle of a write can leave a torn last line: :func:`read_history` drops it
(and :func:`repair_history` cuts it from the file before new lines are appended).
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from search.core.atomic import append_line, atomic_write_text
from search.core.errors import NasdeployError, shorten
from search.core.jsonio import JsonError, annotation_words, fits_annotation, loads_json, read_limited
from search.space.genotype import Genotype

HISTORY_MAX_BYTES = 256 * 1024 * 1024
"""Largest trials.jsonl read (a record is about 1 kB)."""


@dataclass
class TrialRecord:
    """One evaluated candidate (the fields of a ``trials.jsonl`` line, see DESIGN.md).

    ``duplicate_of`` names the earlier trial whose result was reused when the same
    genotype was proposed again (no retraining); it is ``None`` for fresh evaluations.
    ``latency_p10_ms``/``latency_p90_ms`` are the spread of the timed runs behind
    ``latency_ms`` (their median); ``None`` in older records and for unmeasured latency.
    ``rerank_accuracy``/``rerank_reward``/``rerank_seeds`` are set on the candidates trained
    again at higher fidelity after the search (:mod:`search.experiment.rerank`): the mean
    validation accuracy over ``rerank_seeds`` and the reward recomputed with it and this
    trial's latency and MACs; ``None`` for every other trial and in older files.
    """

    trial: int
    strategy: str
    genotype: dict[str, Any]
    accuracy: float
    latency_ms: float | None
    macs: int | None
    params: int | None
    reward: float
    feasible: bool
    status: str
    error: str | None
    wall_time_s: float
    train_time_s: float
    latency_time_s: float
    finished_at: str
    duplicate_of: int | None = None
    latency_p10_ms: float | None = None
    latency_p90_ms: float | None = None
    rerank_accuracy: float | None = None
    rerank_reward: float | None = None
    rerank_seeds: list[int] | None = None

    def to_genotype(self) -> Genotype:
        return Genotype.from_dict(self.genotype)

    @property
    def genotype_key(self) -> str:
        """One key per network (:meth:`Genotype.key`: two spellings of one network, one key)."""
        return self.to_genotype().key()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        """Build a record from a ``trials.jsonl`` object, checking every field's type (not the
        genotype's content: :meth:`to_genotype` does); ``ValueError`` names the first bad field
        (unknown fields are ignored)."""
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ValueError(f"missing field(s) {', '.join(missing[:3])}{more}")
        for f in fields(cls):
            if f.name in data and not fits_annotation(data[f.name], str(f.type)):
                raise ValueError(f"field {f.name!r} must be {annotation_words(str(f.type))}, "
                                 f"got {shorten(data[f.name])}")
        seeds = data.get("rerank_seeds")
        if seeds is not None and not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ValueError(f"field 'rerank_seeds' must be a list of whole numbers, got {shorten(seeds)}")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def utc_now() -> str:
    """The current UTC time as ``2026-11-23T20:00:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def append_record(path: str | os.PathLike[str], record: TrialRecord) -> None:
    """Append one line durably (write, flush, fsync)."""
    append_line(path, json.dumps(record.to_dict(), sort_keys=True, allow_nan=False))


def write_history(path: str | os.PathLike[str], records: list[TrialRecord]) -> None:
    """Replace the whole file with ``records`` atomically (only while the run's lock is held
    and no trial is being appended: after the search, to record re-ranked scores)."""
    atomic_write_text(path, "".join(json.dumps(r.to_dict(), sort_keys=True, allow_nan=False) + "\n"
                                    for r in records))


def _split(path: Path) -> tuple[list[TrialRecord], int]:
    """Parse the file; return the records and the byte length of the intact prefix."""
    if not path.exists():
        return [], 0
    data = read_limited(path, max_bytes=HISTORY_MAX_BYTES)
    records: list[TrialRecord] = []
    offset = 0
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        is_last = number == len(lines)
        if not raw.strip():
            offset += len(raw) + (0 if is_last else 1)
            continue
        try:
            if is_last:  # no newline after it: the write was cut short
                raise ValueError("torn line")
            records.append(TrialRecord.from_dict(loads_json(raw, f"line {number}", expect=dict)))
        except (ValueError, TypeError, AttributeError) as exc:
            if is_last:  # only a line without its newline can be a cut-short append
                return records, offset
            reason = exc.reason.removeprefix("is ") if isinstance(exc, JsonError) else exc
            raise NasdeployError(f"{path}: line {number} is corrupt ({reason})") from None
        offset += len(raw) + 1
    return records, offset


def read_history(path: str | os.PathLike[str]) -> list[TrialRecord]:
    """All complete records, in order; a torn last line is ignored."""
    return _split(Path(path))[0]


def repair_history(path: str | os.PathLike[str]) -> list[TrialRecord]:
    """Cut a torn last line from the file (so appends start clean); return the records."""
    p = Path(path)
    records, intact = _split(p)
    if p.exists() and p.stat().st_size != intact:
        with open(p, "r+b") as handle:
            handle.truncate(intact)
            handle.flush()
            os.fsync(handle.fileno())
    return records
