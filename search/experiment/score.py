"""Score genotypes with an evaluator over several seeds: the one scoring loop.

``python -m search.score`` (through :mod:`search.experiment.score_command`), the re-ranking
after a search (:mod:`search.experiment.rerank`) and the evaluator-fidelity benchmark all
call :func:`score_genotypes` with a *scorer*: a function ``(genotype, seed) -> result``
whose result has ``accuracy``, ``status``, ``error``, ``train_time_s`` and ``params`` (an
:class:`~search.evaluation.proxy.AccuracyResult`). :func:`proxy_scorer` makes one that
trains the proxy network of :mod:`search.evaluation.proxy` with the given seed;
:func:`oneshot_scorer` one that reads a trained weight-sharing supernet.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from search.space.genotype import Genotype

Scorer = Callable[[Genotype, int], Any]
"""``(genotype, seed) -> result`` with ``accuracy``, ``status`` (``ok``, ``diverged``,
``failed``), ``error``, ``train_time_s`` and ``params``."""


@dataclass(frozen=True)
class ScoreRow:
    """One genotype scored with every seed.

    A seed whose child diverged or failed counts as accuracy 0 in :attr:`mean` (as the
    search scores it); :attr:`status` is the first such status, else ``ok``.
    """

    name: str
    genotype: Genotype
    seeds: tuple[int, ...]
    accuracies: tuple[float, ...]
    statuses: tuple[str, ...]
    errors: tuple[str | None, ...]
    params: int
    seconds: float

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies) if self.accuracies else 0.0

    @property
    def spread(self) -> float:
        """Largest minus smallest accuracy over the seeds (0 for one seed)."""
        return max(self.accuracies) - min(self.accuracies) if self.accuracies else 0.0

    @property
    def status(self) -> str:
        return next((s for s in self.statuses if s != "ok"), "ok")

    @property
    def error(self) -> str | None:
        return next((e for e in self.errors if e), None)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mean_accuracy": self.mean, "seeds": list(self.seeds),
                "accuracies": list(self.accuracies), "status": self.status, "error": self.error,
                "params": self.params, "seconds": round(self.seconds, 3),
                "genotype": self.genotype.to_dict()}


def proxy_scorer(data: Any, settings: Any) -> Scorer:
    """Train the proxy network of each genotype on ``data`` with ``settings`` and the seed.

    ``settings`` is a :class:`~search.evaluation.proxy.ChildSettings`; its ``seed`` is
    replaced by the one each call asks for (weights, batch order and training subset).
    """
    from search.evaluation.proxy import evaluate_child

    def score(genotype: Genotype, seed: int) -> Any:
        return evaluate_child(genotype, data, dataclasses.replace(settings, seed=seed))

    return score


def oneshot_scorer(data: Any, checkpoint: str | Path, *, device: str | None = None,
                   progress: bool = False, stream: TextIO | None = None) -> Scorer:
    """Score with the weights the finished supernet in ``checkpoint`` shares with each genotype.

    The supernet was trained once by a search (:mod:`search.evaluation.oneshot`; ``data``
    must be the data it trained on) and is only loaded here. An inherited-weight score does
    not depend on a seed, so every seed of a genotype gets the same result (computed once).

    Raises:
        NasdeployError: an unreadable, foreign, mismatched or unfinished checkpoint.
    """
    from search.evaluation.oneshot import load_supernet

    extra = {} if device is None else {"device": device}
    evaluator = load_supernet(checkpoint, data, progress=progress, stream=stream, **extra)
    done: dict[str, Any] = {}

    def score(genotype: Genotype, seed: int) -> Any:
        key = genotype.key()
        if key not in done:
            done[key] = evaluator(genotype)
        return done[key]

    return score


class _Progress:
    """A tqdm bar over genotypes x seeds on a terminal (``enabled``), else one line per genotype."""

    def __init__(self, total: int, label: str, *, enabled: bool, stream: TextIO):
        self.stream = stream
        is_tty = getattr(stream, "isatty", lambda: False)()
        self.bar = tqdm(total=total, desc=label, unit="child", file=stream,
                        dynamic_ncols=True) if enabled and is_tty else None

    def seed_done(self, name: str, accuracy: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"{name}: {accuracy:.4f}")

    def row_done(self, line: str) -> None:
        if self.bar is None:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def row_line(row: ScoreRow, index: int, total: int, label: str = "score") -> str:
    """One progress line for a scored genotype (what a run without a terminal prints)."""
    accs = ", ".join(f"{a:.4f}" for a in row.accuracies)
    status = "" if row.status == "ok" else f", {row.status}: {(row.error or '')[:120]}"
    return (f"[{label}] {index}/{total} {row.name}: val acc {accs} (mean {row.mean:.4f}), "
            f"{row.seconds:.1f}s{status}")


def score_genotypes(genotypes: Sequence[tuple[str, Genotype]], scorer: Scorer, seeds: Sequence[int], *,
                    progress: bool = True, stream: TextIO | None = None,
                    label: str = "score") -> list[ScoreRow]:
    """Score every ``(name, genotype)`` with every seed, in order; one row per genotype.

    Args:
        genotypes: what to score, each with a name for tables and progress.
        scorer: ``(genotype, seed) -> result`` (:func:`proxy_scorer`, :func:`oneshot_scorer`).
        seeds: the seeds each genotype is scored with.
        progress: a bar over genotypes x seeds when ``stream`` is a terminal; ``False``
            (or a stream that is not a terminal) prints one flushed line per genotype
            instead (see :func:`row_line`), as the search loop does per trial.
        stream: where progress goes (default ``sys.stderr``).
        label: names the work in the progress output.
    """
    bar = _Progress(len(genotypes) * len(seeds), label, enabled=progress,
                    stream=sys.stderr if stream is None else stream)
    rows = []
    try:
        for index, (name, genotype) in enumerate(genotypes, start=1):
            results = []
            for seed in seeds:
                results.append(scorer(genotype, seed))
                bar.seed_done(name, float(results[-1].accuracy))
            row = ScoreRow(
                name, genotype, tuple(seeds),
                tuple(float(r.accuracy) if r.status == "ok" else 0.0 for r in results),
                tuple(str(r.status) for r in results), tuple(getattr(r, "error", None) for r in results),
                max((int(getattr(r, "params", 0) or 0) for r in results), default=0),
                sum(float(getattr(r, "train_time_s", 0.0) or 0.0) for r in results))
            rows.append(row)
            bar.row_done(row_line(row, index, len(genotypes), label))
    finally:
        bar.close()
    return rows


def score_table(rows: Sequence[ScoreRow]) -> str:
    """The rows as an aligned text table: accuracy per seed, mean, params, seconds."""
    seeds = rows[0].seeds if rows else ()
    head = ["genotype", *[f"seed {s}" for s in seeds], "mean", "M params", "seconds", "status"]
    body = [[row.name, *[f"{a:.4f}" for a in row.accuracies], f"{row.mean:.4f}",
             f"{row.params / 1e6:.3f}", f"{row.seconds:.1f}",
             row.status if row.status == "ok" else f"{row.status}: {(row.error or '')[:80]}"]
            for row in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def fmt(line: list[str]) -> str:
        cells = [cell.ljust(w) if i in (0, len(line) - 1) else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(line, widths, strict=True))]
        return "  ".join(cells).rstrip()

    return "\n".join(fmt(line) for line in [head, *body])
