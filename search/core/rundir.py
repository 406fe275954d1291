"""The file names of a run directory, declared once (stdlib only).

Stages meet through files in a run directory; every module that writes or reads one of
them takes its name from here.

=========================  =========================  ==============================================
constant                   file                       what it is (written by)
=========================  =========================  ==============================================
``CONFIG_NAME``            ``config.json``            search settings, enough to resume (search.run)
``LOCK_NAME``              ``.lock``                  one search per run directory (search.run)
``HISTORY_NAME``           ``trials.jsonl``           one trial record per line (search loop)
``LATENCY_CACHE_NAME``     ``latency_cache.jsonl``    measured latency per genotype (search.run)
``RERANK_NAME``            ``rerank.jsonl``           re-ranked children, one per line (search.run)
``STUDY_DB_NAME``          ``study.db``               Optuna's SQLite study (optuna strategies)
``CONTROLLER_NAME``        ``controller.pt``          RL controller state, for resume (rl strategy)
``SUPERNET_NAME``          ``supernet.pt``            weight-sharing supernet, for resume (oneshot)
``PREDICTOR_NAME``         ``latency_predictor.json`` predictor profiled on this host (oneshot)
``PROFILE_DIR_NAME``       ``latency_profile/``       its panel and measurements (oneshot)
``GENOTYPE_NAME``          ``genotype.json``          the selected cell (search report)
``PARETO_JSON_NAME``       ``pareto.json``            accuracy/latency Pareto front (search report)
``PARETO_PNG_NAME``        ``pareto.png``             its plot (search report)
``REWARD_PNG_NAME``        ``reward.png``             reward per trial (search report)
``SUMMARY_NAME``           ``summary.md``             human-readable summary (search report)
``CHECKPOINT_NAME``        ``checkpoint.pt``          trained weights + model card (search.train)
``TRAIN_LOG_NAME``         ``train_log.jsonl``        one line per training epoch (search.train)
``MODEL_ONNX_NAME``        ``model.onnx``             verified fp32 ONNX with its card (export.onnx)
(:func:`variant_path`)     ``model.fp16.onnx`` ...    fp16 / int8 siblings (export.onnx)
``EXPORT_REPORT_NAME``     ``export_report.json``     checks and figures of the export (export.onnx)
(:func:`engine_path`)      ``model.engine``           TensorRT engine (export.tensorrt)
(:func:`sidecar_path`)     ``model.engine.json``      the engine's model card and build facts
=========================  =========================  ==============================================

``REPORT_FILES`` lists the search report's files in the order a summary names them.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_NAME = "config.json"
LOCK_NAME = ".lock"
HISTORY_NAME = "trials.jsonl"
LATENCY_CACHE_NAME = "latency_cache.jsonl"
RERANK_NAME = "rerank.jsonl"
STUDY_DB_NAME = "study.db"
CONTROLLER_NAME = "controller.pt"
SUPERNET_NAME = "supernet.pt"
PREDICTOR_NAME = "latency_predictor.json"
PROFILE_DIR_NAME = "latency_profile"
GENOTYPE_NAME = "genotype.json"
PARETO_JSON_NAME = "pareto.json"
PARETO_PNG_NAME = "pareto.png"
REWARD_PNG_NAME = "reward.png"
SUMMARY_NAME = "summary.md"
CHECKPOINT_NAME = "checkpoint.pt"
TRAIN_LOG_NAME = "train_log.jsonl"
MODEL_ONNX_NAME = "model.onnx"
EXPORT_REPORT_NAME = "export_report.json"

ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIX = ".engine"
ENGINE_SUFFIXES = (ENGINE_SUFFIX, ".plan", ".trt")
"""Suffixes read as serialized TensorRT engines (``ENGINE_SUFFIX`` is the one written)."""
SIDECAR_SUFFIX = ".json"

REPORT_FILES = (GENOTYPE_NAME, HISTORY_NAME, PARETO_JSON_NAME, PARETO_PNG_NAME, REWARD_PNG_NAME,
                SUMMARY_NAME)


def variant_path(path: Path, precision: str) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (the sibling holding another precision)."""
    return path.with_name(f"{path.stem}.{precision}{path.suffix}")


def engine_path(onnx_path: Path) -> Path:
    """``model.fp16.onnx`` -> ``model.fp16.engine`` (the engine built from it, beside it)."""
    return onnx_path.with_suffix(ENGINE_SUFFIX)


def sidecar_path(engine: Path) -> Path:
    """``model.engine`` -> ``model.engine.json`` (the engine's metadata)."""
    return engine.with_name(engine.name + SIDECAR_SUFFIX)
