"""Pick a run's best trial under a new budget: ``python -m search.select RUN_DIR --latency-budget 3ms``.

No child is trained again: feasibility and reward are recomputed from ``trials.jsonl``
and the run's ``genotype.json``, ``pareto.json``, plots and ``summary.md`` are rewritten
(atomically, under the run's lock). ``search.train RUN_DIR`` then trains the new choice.
"""

from __future__ import annotations

import argparse

from search.core import cli
from search.core.errors import USER_ERRORS, NasdeployError, report_user_error
from search.experiment.select import reselect, reselection_text


def _budget_text(parse):  # validate with the shared parser, keep the user's spelling
    def check(text: str) -> str:
        parse(text)
        return text.strip()

    return check


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m search.select`` argument parser."""
    p = cli.parser("python -m search.select", __doc__.split("\n\n", 1)[1].strip())
    p.add_argument("run_dir", metavar="RUN_DIR", help="a search run directory (holds trials.jsonl)")
    p.add_argument("--latency-budget", type=_budget_text(cli.latency_ms), metavar="T",
                   help="new latency budget with its unit, e.g. 3ms, 800us (default: the search's)")
    p.add_argument("--macs-budget", type=str, metavar="N",
                   help="new budget of multiply-accumulates per image, e.g. 10M, 1.2G, or 'none' to drop it "
                        "(default: the search's)")
    p.add_argument("--flops-budget", dest="macs_budget", metavar="N",
                   help="old name of --macs-budget (it counts multiply-accumulates, not FLOPs)")
    p.add_argument("--hard-constraint", action=argparse.BooleanOptionalAction, default=None,
                   help="hard budget (reward 0 over it) instead of MnasNet's soft penalty (default: the "
                        "search's)")
    cli.add_json(p, "the selection")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m search.select``."""
    args = build_parser().parse_args(argv)
    try:
        if args.latency_budget is None and args.macs_budget is None and args.hard_constraint is None:
            raise NasdeployError("give a new --latency-budget and/or --macs-budget (or --hard-constraint)")
        if args.macs_budget is not None and args.macs_budget.strip().lower() != "none":
            cli.count(args.macs_budget)
        result = reselect(args.run_dir, args.latency_budget, args.macs_budget, hard=args.hard_constraint)
    except argparse.ArgumentTypeError as exc:
        return report_user_error(NasdeployError(f"--macs-budget: {exc}"))
    except USER_ERRORS as exc:
        return report_user_error(exc)
    record = result.selection.record if result.selection else None
    payload = {"run_dir": str(result.run_dir), "latency_budget_ms": result.reward.latency_budget_ms,
               "macs_budget": result.reward.macs_budget, "feasible": result.feasible,
               "candidates": result.candidates, "previous_trial": result.previous_trial,
               "trial": record.trial if record else None,
               "meets_budget": result.selection.feasible if result.selection else None,
               "accuracy": record.accuracy if record else None,
               "latency_ms": record.latency_ms if record else None}
    if not cli.emit_json(args.json, payload):
        print(reselection_text(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
