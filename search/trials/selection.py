"""Which trials matter: the Pareto front and the selection rule (pure, torch-free).

One rule picks the run's genotype, the summary's best row, the progress bar's best and
the app's highlighted trial: highest validation accuracy among feasible candidates,
else the fastest candidate. When the run re-ranked its best candidates at higher fidelity
(``rerank_*`` fields, :mod:`search.experiment.rerank`) and that winner is among them, the
re-ranked candidate with the highest re-ranked reward is chosen instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from search.trials.history import TrialRecord


@dataclass(frozen=True)
class Selection:
    """The chosen genotype and whether it meets the budget."""

    record: TrialRecord
    feasible: bool
    reranked: bool = False

    @property
    def note(self) -> str:
        if self.reranked:
            return ("highest re-ranked reward among the best candidates trained again at higher "
                    "fidelity that meet the budget")
        if self.feasible:
            return "highest validation accuracy among candidates that meet the budget"
        return "NO candidate met the budget; this is the fastest one found"


def measured(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Distinct ``ok`` candidates with a latency (duplicates point to earlier trials)."""
    return [r for r in records
            if r.status == "ok" and r.latency_ms is not None and r.duplicate_of is None]


def pareto_front(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Non-dominated candidates (higher accuracy, lower latency), fastest first."""
    front: list[TrialRecord] = []
    for r in sorted(measured(records), key=lambda r: (r.latency_ms, -r.accuracy)):
        if not front or r.accuracy > front[-1].accuracy:
            front.append(r)
    return front


def select_best(records: Sequence[TrialRecord], *, rerank: bool = True) -> Selection | None:
    """Highest accuracy among feasible candidates, else the fastest; ``None`` if none ran.

    The fallback prefers children that trained: a diverged or failed child is picked only
    when no candidate trained at all, since its genotype is what training starts from.

    With ``rerank`` (the default), when that choice is a feasible candidate that was trained
    again at higher fidelity (it has a ``rerank_reward``), the winner is the feasible
    re-ranked candidate with the highest re-ranked reward: re-ranked scores are compared
    only with each other, and only when they cover the candidate the plain rule would pick
    (a new budget in ``search.select`` can make another one the plain winner; then the plain
    rule holds). ``rerank=False`` gives the search's own choice.
    """
    feasible = [r for r in measured(records) if r.feasible]
    if feasible:
        plain = max(feasible, key=lambda r: (r.accuracy, -r.latency_ms))
        scored = [r for r in feasible if r.rerank_reward is not None]
        if rerank and plain.rerank_reward is not None:
            return Selection(max(scored, key=lambda r: (r.rerank_reward or 0.0, -r.latency_ms)), True, True)
        return Selection(plain, True)
    timed = measured(records) or [
        r for r in records if r.latency_ms is not None and r.duplicate_of is None
    ]
    if not timed:
        return None
    return Selection(min(timed, key=lambda r: (r.latency_ms, -r.accuracy)), False)
