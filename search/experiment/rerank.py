"""Re-ranking: the search's best candidates trained again at higher fidelity.

A search scores each candidate with a cheap, noisy proxy (one short epoch by default), so
the order of its best few candidates is partly luck. After the loop, the top K feasible
distinct candidates by search reward (distinct by :meth:`Genotype.key`; the candidate the
selection rule picks is always among them) are trained again with the proxy evaluator
at higher fidelity: :data:`EPOCH_FACTOR` times the child epochs on :data:`TRAIN_FACTOR`
times the child's training images (or all of them), with :data:`SEEDS` seeds, averaged.
The MnasNet reward is recomputed with that accuracy and the trial's recorded latency and
MACs; the winner is the best re-ranked reward (:func:`search.trials.selection.select_best`).

Durability: every finished child (candidate, seed) is appended to ``rerank.jsonl``
(fsync'd) with its fidelity, and ``trials.jsonl`` is rewritten once, atomically, under the
run's lock, with ``rerank_accuracy``, ``rerank_reward`` and ``rerank_seeds`` merged from
that journal. A run killed while re-ranking keeps ``trials.jsonl`` as the loop wrote it;
resumed, it reuses the children in the journal and trains only the missing ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from search.core.atomic import append_line
from search.core.jsonio import JsonError, loads_json, read_limited
from search.core.rundir import HISTORY_NAME, RERANK_NAME
from search.evaluation.proxy import AccuracyResult, ChildSettings
from search.evaluation.reward import RewardConfig, mnas_reward
from search.experiment.score import proxy_scorer, score_genotypes
from search.space.genotype import Genotype
from search.trials.history import TrialRecord, utc_now, write_history
from search.trials.selection import measured, select_best

DEFAULT_RERANK = 3
"""Candidates re-ranked after a search unless ``--rerank`` says otherwise (0: off)."""
EPOCH_FACTOR = 3
"""Re-ranking trains this many times the child epochs."""
TRAIN_FACTOR = 2
"""... on this many times the child's training images (all of them when that is more)."""
SEEDS = 2
"""... with this many seeds (the run's seed and the next ones), averaged."""
JOURNAL_MAX_BYTES = 64 * 1024 * 1024
"""Largest ``rerank.jsonl`` read (a line is about 400 bytes)."""
_NOT_FIDELITY = ("seed", "device", "cpu_threads")
"""Child settings that do not change what a re-ranked child measures."""


def rerank_count(requested: int | None) -> int:
    """Candidates to re-rank: ``--rerank K``, or :data:`DEFAULT_RERANK` when not given."""
    return DEFAULT_RERANK if requested is None else requested


def rerank_settings(child: ChildSettings, train_images: int) -> ChildSettings:
    """The higher-fidelity proxy: longer, on more images (all when the child used all)."""
    more = None if child.train_size is None else child.train_size * TRAIN_FACTOR
    return dataclasses.replace(child, epochs=child.epochs * EPOCH_FACTOR,
                               train_size=None if more is None or more >= train_images else more)


def rerank_seeds(seed: int) -> tuple[int, ...]:
    """The seeds of a re-ranked candidate: the run's seed and the next ones."""
    return tuple(seed + i for i in range(SEEDS))


def fidelity(settings: ChildSettings) -> dict[str, Any]:
    """What a re-ranked child's accuracy depends on (a journal line is reused only under it)."""
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in _NOT_FIDELITY}


def describe(settings: ChildSettings, seeds: Sequence[int]) -> str:
    """``1@32, 3 epochs on all training images, seeds 0 and 1``."""
    images = "all" if settings.train_size is None else str(settings.train_size)
    epochs = f"{settings.epochs} epoch" + ("" if settings.epochs == 1 else "s")
    names = [str(s) for s in seeds]
    seed_text = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
    plural = "s" if len(names) > 1 else ""
    return f"{settings.scale}, {epochs} on {images} training images, seed{plural} {seed_text}"


def _key(record: TrialRecord) -> str:
    return record.to_genotype().key()


def rerank_candidates(records: Sequence[TrialRecord], k: int) -> list[TrialRecord]:
    """The top ``k`` feasible distinct candidates by search reward, best first.

    The candidate the search alone would select (:func:`select_best` without re-ranking)
    is always among them (in place of the last one), so re-ranking compares it with its
    rivals at equal fidelity. Two trials of one network (same key) count once.
    """
    if k <= 0:
        return []
    best: dict[str, TrialRecord] = {}
    for record in measured(records):
        if record.feasible:
            key = _key(record)
            if key not in best or (record.reward, -record.trial) > (best[key].reward, -best[key].trial):
                best[key] = record
    chosen = sorted(best.values(), key=lambda r: (-r.reward, r.trial))[:k]
    plain = select_best(records, rerank=False)
    if plain is not None and plain.feasible and all(_key(r) != _key(plain.record) for r in chosen):
        chosen = [*chosen[: k - 1], plain.record]
    return chosen


def read_journal(path: Path, settings: ChildSettings) -> dict[tuple[str, int], AccuracyResult]:
    """The children in ``rerank.jsonl`` trained at ``settings``' fidelity, by (key, seed).

    A line that is torn, corrupt or of another fidelity is skipped (its child is trained
    again); a later line for the same child wins.
    """
    try:
        data = read_limited(path, max_bytes=JOURNAL_MAX_BYTES)
    except FileNotFoundError:
        return {}
    wanted = fidelity(settings)
    done: dict[tuple[str, int], AccuracyResult] = {}
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            line = loads_json(raw, str(path), expect=dict)
            key, seed = line["key"], line["seed"]
            result = AccuracyResult(float(line["accuracy"]), str(line["status"]), line.get("error"),
                                    float(line.get("train_time_s", 0.0)), int(line.get("params", 0)))
        except (JsonError, KeyError, TypeError, ValueError):
            continue
        if (line.get("fidelity") != wanted or not isinstance(key, str) or isinstance(seed, bool)
                or not isinstance(seed, int) or not math.isfinite(result.accuracy)):
            continue
        done[(key, seed)] = result
    return done


def _journal_line(record: TrialRecord, key: str, seed: int, settings: ChildSettings,
                  result: Any) -> str:
    accuracy = float(result.accuracy)
    return json.dumps({
        "trial": record.trial, "key": key, "seed": seed, "fidelity": fidelity(settings),
        "accuracy": accuracy if math.isfinite(accuracy) else 0.0, "status": str(result.status),
        "error": result.error, "train_time_s": float(getattr(result, "train_time_s", 0.0) or 0.0),
        "params": int(getattr(result, "params", 0) or 0), "finished_at": utc_now()},
        sort_keys=True, allow_nan=False)


def merge_reranked(records: Sequence[TrialRecord], done: dict[tuple[str, int], AccuracyResult],
                   seeds: Sequence[int], reward: RewardConfig) -> list[TrialRecord]:
    """``records`` with the ``rerank_*`` fields of every candidate re-ranked on all ``seeds``.

    The mean counts a diverged or failed seed as accuracy 0; the reward is the MnasNet
    reward of that mean with the trial's latency and MACs. Repeated trials
    (``duplicate_of``) and candidates not re-ranked carry no ``rerank_*`` fields.
    """
    merged = []
    eligible = {id(r) for r in measured(records)}
    for record in records:
        results = [done.get((_key(record), s)) for s in seeds] if id(record) in eligible else [None]
        if any(r is None for r in results):
            merged.append(dataclasses.replace(record, rerank_accuracy=None, rerank_reward=None,
                                              rerank_seeds=None))
            continue
        accuracy = statistics.fmean(r.accuracy if r.status == "ok" else 0.0
                                    for r in results if r is not None)
        assert record.latency_ms is not None  # measured() keeps only timed candidates
        merged.append(dataclasses.replace(
            record, rerank_accuracy=accuracy, rerank_seeds=list(seeds),
            rerank_reward=mnas_reward(accuracy, record.latency_ms, reward, record.macs)))
    return merged


@dataclass(frozen=True)
class RerankResult:
    """The outcome of :func:`rerank`.

    Attributes:
        records: every trial of the run, the re-ranked ones with their ``rerank_*`` fields.
        candidates: the trials re-ranked, best search reward first.
        settings: the higher-fidelity child settings; ``seeds`` the seeds averaged.
        search_choice: the trial the search alone selected; ``winner`` the final one.
        trained, reused: children trained now and read back from ``rerank.jsonl``.
        seconds: wall time of the re-ranking.
    """

    records: list[TrialRecord]
    candidates: list[int]
    settings: ChildSettings
    seeds: tuple[int, ...]
    search_choice: int | None
    winner: int | None
    trained: int
    reused: int
    seconds: float

    @property
    def changed(self) -> bool:
        """Whether re-ranking selected another trial than the search alone."""
        return self.search_choice != self.winner

    def to_dict(self) -> dict[str, Any]:
        """What ``genotype.json`` (``metadata.search.rerank``) and ``--json`` record."""
        return {"candidates": self.candidates, "seeds": list(self.seeds),
                "epochs": self.settings.epochs, "train_size": self.settings.train_size,
                "scale": self.settings.scale, "search_choice": self.search_choice,
                "winner": self.winner, "changed": self.changed, "seconds": round(self.seconds, 1)}


def rerank(run_dir: str | Path, records: Sequence[TrialRecord], data: Any, child: ChildSettings,
           reward: RewardConfig, k: int, *, progress: bool = True,
           stream: TextIO | None = None) -> RerankResult:
    """Re-rank the best ``k`` candidates of the finished search in ``run_dir``.

    Call it with the run's lock held and the loop finished: it appends to ``rerank.jsonl``
    and replaces ``trials.jsonl`` (atomically) with ``records`` plus the re-ranked scores.

    Args:
        run_dir: the run directory.
        records: all trials of the run, as the loop returned them.
        data: the search's data (children train on ``train`` and are scored on ``val``).
        child: the search's child settings (scale, epochs, training images, seed, device).
        reward: the search's reward budgets.
        k: how many candidates (:func:`rerank_candidates`).
        progress: a bar over children on a terminal, else (or with ``False``) one line per
            candidate; a line naming the candidates and the fidelity comes first.
        stream: where progress goes (default ``sys.stderr``).
    """
    start = time.perf_counter()
    out = sys.stderr if stream is None else stream
    run = Path(run_dir)
    journal = run / RERANK_NAME
    settings = rerank_settings(child, len(data.train))
    seeds = rerank_seeds(child.seed)
    chosen = rerank_candidates(records, k)
    done = read_journal(journal, settings)
    counts = {"trained": 0, "reused": 0}
    by_key = {_key(r): r for r in chosen}
    base = proxy_scorer(data, settings)

    def scorer(genotype: Genotype, seed: int) -> Any:
        key = genotype.key()
        if (key, seed) in done:
            counts["reused"] += 1
            return done[(key, seed)]
        result = base(genotype, seed)
        append_line(journal, _journal_line(by_key[key], key, seed, settings, result))
        done[(key, seed)] = AccuracyResult(float(result.accuracy), str(result.status), result.error,
                                           float(result.train_time_s), int(result.params))
        counts["trained"] += 1
        return result

    if chosen:
        trials = ", ".join(str(r.trial) for r in chosen)
        print(f"re-ranking {len(chosen)} candidate{'s' if len(chosen) != 1 else ''} (trial"
              f"{'s' if len(chosen) != 1 else ''} {trials}) at higher fidelity: "
              f"{describe(settings, seeds)}", file=out, flush=True)
    score_genotypes([(f"trial {r.trial}", r.to_genotype()) for r in chosen], scorer, seeds,
                    progress=progress, stream=out, label="rerank")
    merged = merge_reranked(records, done, seeds, reward)
    if merged != list(records):
        write_history(run / HISTORY_NAME, merged)
    plain, final = select_best(merged, rerank=False), select_best(merged)
    return RerankResult(merged, [r.trial for r in chosen], settings, seeds,
                        None if plain is None else plain.record.trial,
                        None if final is None else final.record.trial,
                        counts["trained"], counts["reused"], time.perf_counter() - start)


def reranked_records(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The distinct candidates with a re-ranked score, best re-ranked reward first."""
    return sorted((r for r in measured(records) if r.rerank_reward is not None),
                  key=lambda r: (-(r.rerank_reward or 0.0), r.trial))


def rerank_summary(records: Sequence[TrialRecord]) -> dict[str, Any] | None:
    """Which candidates were re-ranked, with both scores, and whether the winner changed.

    ``None`` when no candidate was re-ranked. ``winner`` is the run's selection and
    ``search_choice`` what the search alone would have selected.
    """
    reranked = reranked_records(records)
    if not reranked:
        return None
    plain, final = select_best(records, rerank=False), select_best(records)
    choice = None if plain is None else plain.record.trial
    winner = None if final is None else final.record.trial
    return {"candidates": [{"trial": r.trial, "accuracy": r.accuracy, "reward": r.reward,
                            "rerank_accuracy": r.rerank_accuracy, "rerank_reward": r.rerank_reward,
                            "feasible": r.feasible} for r in reranked],
            "seeds": reranked[0].rerank_seeds, "search_choice": choice, "winner": winner,
            "changed": choice != winner}


def rerank_lines(records: Sequence[TrialRecord]) -> list[str]:
    """The re-ranked candidates and the verdict, for the summary a search prints."""
    summary = rerank_summary(records)
    if summary is None:
        return []
    rows = summary["candidates"]
    seeds = " and ".join(str(s) for s in summary["seeds"] or [])
    lines = [f"re-ranked {len(rows)} candidate{'s' if len(rows) != 1 else ''} at higher fidelity "
             f"({EPOCH_FACTOR}x the child epochs, {TRAIN_FACTOR}x its training images or all, "
             f"seeds {seeds}):"]
    for row in rows:
        mark = "  <- selected" if row["trial"] == summary["winner"] else ""
        lines.append(f"  trial {row['trial']}: val acc {row['accuracy']:.4f} -> "
                     f"{row['rerank_accuracy']:.4f}, reward {row['reward']:.4f} -> "
                     f"{row['rerank_reward']:.4f}{mark}")
    if summary["changed"]:
        lines.append(f"re-ranking changed the winner to trial {summary['winner']} (the search alone chose "
                     f"trial {summary['search_choice']})")
    else:
        lines.append(f"re-ranking kept the search's choice, trial {summary['winner']}")
    return lines
