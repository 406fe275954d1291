"""A latency predictor fitted on measurements from the target device (torch-free features).

A candidate's latency at a fixed target (variant, image size, classes) depends on which ops
its two cells hold and where they run. :func:`features` walks the network exactly as
``search.nn.model.NASNet`` stacks it (stem, stem reductions, three stages, reductions) and
sums, per op type, the op count, its multiply-accumulates and its output elements at the
width and resolution each instance runs at, plus the cells' 1x1 preprocessing, concat
projections and factorized reductions. Two models are fitted on those features:

- ``table``: non-negative linear regression, i.e. a learned per-op cost table (a cost per
  instance, per MAC and per output element of each op type) plus a constant;
- ``boosted``: gradient-boosted trees on the same features (scikit-learn), which can learn
  interactions (memory-bound ops, cache effects).

The one with the better held-out share within +-10 % is kept (ties: lower RMSE). The
predictor file records the device, runtime, precision, threads, the target and the held-out
report, and refuses to predict for another target. Predicting one candidate takes well
under a millisecond of feature arithmetic.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.core.atomic import atomic_write_text
from search.core.errors import NasdeployError
from search.core.jsonio import read_json
from search.space.genotype import Cell, Genotype
from search.space.opnames import OP_NAMES
from search.space.scale import Scale, cell_plan, parse_scale, stem_shape

PREDICTOR_FORMAT = "nasdeploy-latency-predictor"
PREDICTOR_VERSION = 1
MEASUREMENTS_FORMAT = "nasdeploy-latency-measurements"
MODEL_KINDS = ("table", "boosted")
HOLDOUT_FRACTION = 0.25
MIN_TRAIN = 6
"""Fewest measured models a predictor is fitted on (after the held-out share)."""
_STRUCTURE = (
    "preprocess_macs",
    "preprocess_elems",
    "concat_macs",
    "concat_count",
    "reduce_macs",
    "cell_outputs",
    "total_macs",
    "total_elems",
)
FEATURE_NAMES: tuple[str, ...] = (
    tuple(f"{op}:{kind}" for op in OP_NAMES for kind in ("count", "macs", "elems")) + _STRUCTURE
)


class PredictorError(NasdeployError):
    """A predictor or measurement file that cannot be used."""


def _out(size: int, stride: int) -> int:
    return -(-size // stride)


def _op_cost(op: str, c: int, h_out: int, stride: int) -> float:
    """Multiply-accumulates of one op instance (C in = C out) with output side ``h_out``."""
    area = h_out * h_out
    if op.startswith("sep_conv_"):
        k = int(op[-1])
        return 2.0 * (k * k * c + c * c) * area
    if op == "conv_1x1":
        return float(c * c * area)
    if op == "conv_3x3":
        return 9.0 * c * c * area
    if op == "dil_conv_3x3":
        return 9.0 * c * c * area
    if op.startswith("conv_1x"):  # conv_1x3_3x1, conv_1x7_7x1: a 1xk then a kx1
        k = int(op[len("conv_1x")])
        return 2.0 * k * c * c * area
    if "pool" in op:
        k = int(op[-1])
        return float(k * k * c * area)
    if op == "identity":
        return float(c * c * area) if stride == 2 else 0.0  # a factorized reduction at stride 2
    raise PredictorError(f"no cost rule for op {op!r}")


def _cell_features(
    cell: Cell,
    acc: dict[str, float],
    c: int,
    h_in: int,
    c_pp: int,
    c_p: int,
    reduction: bool,
    reduction_prev: bool,
) -> tuple[int, int]:
    """Add one cell instance's features; return (output channels, output side)."""
    h_out = _out(h_in, 2) if reduction else h_in
    pre0 = c_pp * c * h_in * h_in if not reduction_prev else c_pp * c * h_in * h_in // 2
    pre1 = c_p * c * h_in * h_in
    acc["preprocess_macs"] += pre0 + pre1
    acc["preprocess_elems"] += 2 * c * h_in * h_in
    for block in cell.blocks:
        for index, op in zip(block.inputs, block.ops, strict=True):
            stride = 2 if reduction and index < 2 else 1
            side = h_out if stride == 2 or not reduction or index >= 2 else h_in
            macs = _op_cost(op, c, side, stride)
            acc[f"{op}:count"] += 1
            acc[f"{op}:macs"] += macs
            acc[f"{op}:elems"] += c * side * side
            acc["total_macs"] += macs
            acc["total_elems"] += c * side * side
        if block.combine == "concat":
            acc["concat_count"] += 1
            acc["concat_macs"] += 2 * c * c * h_out * h_out
    outputs = cell.output_states()
    if reduction:
        acc["reduce_macs"] += sum(c * c * h_out * h_out for i in outputs if i < 2)
    acc["cell_outputs"] += len(outputs)
    return len(outputs) * c, h_out


def features(genotype: Genotype, scale: Scale) -> np.ndarray:
    """The feature vector (:data:`FEATURE_NAMES`) of ``genotype`` built at ``scale``."""
    acc = dict.fromkeys(FEATURE_NAMES, 0.0)
    stem_c, side = stem_shape(genotype, scale)
    c_pp = c_p = stem_c
    reduction_prev = False
    for cell, width, reduction in cell_plan(genotype, scale):
        c_p_next, side_next = _cell_features(cell, acc, width, side, c_pp, c_p, reduction, reduction_prev)
        c_pp, c_p, side, reduction_prev = c_p, c_p_next, side_next, reduction
    acc["total_macs"] += acc["preprocess_macs"] + acc["concat_macs"] + acc["reduce_macs"]
    return np.array([acc[name] for name in FEATURE_NAMES], dtype=np.float64)


@dataclass(frozen=True)
class Target:
    """What a predictor predicts for: the deployment model and where it runs."""

    variant: str
    image_size: int
    num_classes: int
    device: dict[str, Any]
    blocks: int = 5

    def scale(self) -> Scale:
        return parse_scale(self.variant, self.image_size)


@dataclass
class Measurements:
    """A measurements file (``serve.bench --panel``): genotypes and their latencies."""

    target: Target
    genotypes: list[Genotype]
    latency_ms: np.ndarray
    source: Path


def load_measurements(path: str | os.PathLike[str]) -> Measurements:
    """Read and check a measurements file (one line per problem, naming the file)."""
    source = Path(path)
    data = read_json(source, expect=dict)
    if data.get("format") != MEASUREMENTS_FORMAT:
        raise PredictorError(
            f"{source}: not a nasdeploy latency measurements file (format "
            f"{data.get('format')!r}, expected {MEASUREMENTS_FORMAT!r})"
        )
    panel, device = data.get("panel"), data.get("device")
    if not isinstance(panel, dict) or not isinstance(device, dict):
        raise PredictorError(f"{source}: missing 'panel' or 'device'")
    try:
        target = Target(
            str(panel["target_variant"]),
            int(panel["image_size"]),
            int(panel["num_classes"]),
            device,
            int(panel.get("blocks", 5)),
        )
        target.scale()
    except (KeyError, TypeError, ValueError) as exc:
        raise PredictorError(f"{source}: panel lacks a valid target ({exc})") from None
    genotypes, latencies = [], []
    for i, row in enumerate(data.get("results") or []):
        try:
            value = float(row["median_ms"])
            genotype = Genotype.from_dict(row["genotype"])
        except (KeyError, TypeError, ValueError, NasdeployError) as exc:
            raise PredictorError(f"{source}: results[{i}] is malformed ({exc})") from None
        if not math.isfinite(value) or value <= 0:
            raise PredictorError(f"{source}: results[{i}].median_ms must be a positive number, got {value}")
        genotypes.append(genotype)
        latencies.append(value)
    if len(genotypes) < 8:
        raise PredictorError(f"{source}: {len(genotypes)} measured models; a predictor needs at least 8")
    return Measurements(target, genotypes, np.array(latencies), source)


def _column_scale(x: np.ndarray) -> np.ndarray:
    """Per-feature scale for a well-conditioned linear fit."""
    scale = np.abs(x).max(axis=0)
    return np.where(scale > 0, scale, 1.0)


DEVICE_KEYS = ("cpu", "gpu", "runtime", "provider", "threads", "precision")
"""What must agree between measurements pooled into one predictor."""


def pool(sets: list[Measurements]) -> Measurements:
    """Several measurement files of one target on one device as one set (one line if they differ)."""
    first = sets[0]
    for other in sets[1:]:
        same_target = (other.target.variant, other.target.image_size, other.target.num_classes) == (
            first.target.variant,
            first.target.image_size,
            first.target.num_classes,
        )
        same_device = all(other.target.device.get(k) == first.target.device.get(k) for k in DEVICE_KEYS)
        if not (same_target and same_device):
            raise PredictorError(
                f"{other.source} measured another target or device than {first.source}; "
                "fit one predictor per target and device"
            )
    return Measurements(
        first.target,
        [g for s in sets for g in s.genotypes],
        np.concatenate([s.latency_ms for s in sets]),
        first.source,
    )


def _fit(kind: str, x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    """Fit one model kind; the result is plain JSON data (no pickle: a predictor file is input)."""
    if kind == "table":
        from sklearn.linear_model import LinearRegression

        scale = _column_scale(x)
        ones = np.ones((len(x), 1))  # a non-negative constant: no negative latency for any genotype
        model = LinearRegression(positive=True, fit_intercept=False).fit(np.hstack([x / scale, ones]), y)
        params = {
            "kind": "table",
            "coef": (model.coef_[:-1] / scale).tolist(),
            "intercept": float(model.coef_[-1]),
        }
        expected = model.predict(np.hstack([x / scale, ones]))
    else:
        from sklearn.ensemble import GradientBoostingRegressor

        model = GradientBoostingRegressor(
            n_estimators=300, max_depth=3, learning_rate=0.05, subsample=0.8, random_state=seed
        ).fit(np.log1p(x), np.log(y))
        trees = [
            {
                "left": t.tree_.children_left.tolist(),
                "right": t.tree_.children_right.tolist(),
                "feature": t.tree_.feature.tolist(),
                "threshold": t.tree_.threshold.tolist(),
                "value": t.tree_.value[:, 0, 0].tolist(),
            }
            for t in model.estimators_[:, 0]
        ]
        params = {
            "kind": "boosted",
            "init": float(np.ravel(model.init_.constant_)[0]),
            "learning_rate": float(model.learning_rate),
            "trees": trees,
        }
        expected = np.exp(model.predict(np.log1p(x)))
    if not np.allclose(_predict(params, x), expected, rtol=1e-6):  # the JSON form must predict the same
        raise PredictorError(f"internal error: the stored {kind} model does not reproduce its fit")
    return params


def _tree(tree: dict[str, list], row: np.ndarray) -> float:
    node = 0
    while tree["left"][node] != -1:
        go_left = row[tree["feature"][node]] <= tree["threshold"][node]
        node = tree["left"][node] if go_left else tree["right"][node]
    return tree["value"][node]


def _predict(params: dict[str, Any], x: np.ndarray) -> np.ndarray:
    if params["kind"] == "table":
        return x @ np.asarray(params["coef"]) + params["intercept"]
    logs = np.log1p(x)
    rate, trees = params["learning_rate"], params["trees"]
    raw = [params["init"] + rate * sum(_tree(t, row) for t in trees) for row in logs]
    return np.exp(np.asarray(raw))


def accuracy_report(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """Share within +-5 % and +-10 %, RMSE (ms) and mean absolute percentage error."""
    error = (predicted - measured) / measured
    return {
        "within_5pct": float(np.mean(np.abs(error) <= 0.05)),
        "within_10pct": float(np.mean(np.abs(error) <= 0.10)),
        "rmse_ms": float(np.sqrt(np.mean((predicted - measured) ** 2))),
        "mape": float(np.mean(np.abs(error))),
        "samples": int(len(measured)),
    }


@dataclass
class Predictor:
    """A fitted latency predictor for one target."""

    target: Target
    kind: str
    fitted: Any
    holdout: dict[str, Any]
    candidates: dict[str, dict[str, float]]

    def predict(self, genotype: Genotype) -> float:
        """Predicted latency in milliseconds."""
        return self.predict_at(genotype, self.target.scale())

    def predict_at(self, genotype: Genotype, scale: Scale) -> float:
        """Predicted latency of ``genotype`` built at ``scale``, in milliseconds.

        At another N@F than the fitted target this extrapolates: the features (per-op counts,
        MACs and output elements) follow the scale, but the fit only saw one; automatic
        scaling (``search.scale``) marks such figures as extrapolated.
        """
        x = features(genotype, scale)[None, :]
        return float(_predict(self.fitted, x)[0])

    def check_target(
        self, variant: str, image_size: int, num_classes: int, blocks: int | None = None
    ) -> None:
        """Refuse a predictor made for another deployment model or search space (one line)."""
        if blocks is not None and blocks != self.target.blocks:
            raise PredictorError(
                f"this latency predictor was fitted on cells of {self.target.blocks} blocks, not {blocks}: "
                "profile a panel with --blocks as the search uses"
            )
        want = parse_scale(variant, image_size)
        have = self.target.scale()
        if (want.notation, want.layout, want.image_size) != (
            have.notation,
            have.layout,
            have.image_size,
        ) or num_classes != self.target.num_classes:
            raise PredictorError(
                f"this latency predictor was made for {self.target.variant} at {self.target.image_size} px "
                f"with {self.target.num_classes} classes, not {variant} at {image_size} px "
                f"with {num_classes}: "
                "profile a panel of the target you search for (python -m search.latency profile)"
            )

    def device_kind(self) -> str:
        """``cpu``, ``cuda`` or ``tensorrt``: the ``--latency-device`` this predictor stands for."""
        d = self.target.device
        if d.get("runtime") == "tensorrt" or d.get("provider") == "TensorrtExecutionProvider":
            return "tensorrt"
        return "cuda" if d.get("provider") == "CUDAExecutionProvider" else "cpu"

    def check_device(self, device: str, threads: int | None) -> None:
        """Refuse a predictor profiled on another kind of device or thread count (one line).

        The search's ``--latency-device`` and ``--latency-threads`` describe the target; the
        predictor must have been profiled that way (on the device itself, which may be
        another machine).
        """
        kind = self.device_kind()
        if kind != device:
            raise PredictorError(
                f"this latency predictor was profiled on {kind} ({self.device_text()}), not {device}: search "
                f"with --latency-device {kind}, or profile the target with its own device"
            )
        profiled = self.target.device.get("threads")
        if kind != "tensorrt" and profiled is not None and threads is not None and profiled != threads:
            raise PredictorError(
                f"this latency predictor was profiled with {profiled} thread(s), not {threads}: search with "
                f"--latency-threads {profiled}, or profile with --threads {threads}"
            )

    def device_text(self) -> str:
        d = self.target.device
        threads = f", {d['threads']} thread(s)" if d.get("threads") else ""
        return (
            f"{d.get('gpu') or d.get('cpu') or 'unknown device'} ({d.get('runtime', '?')}, "
            f"{d.get('provider', '?')}{threads}, {d.get('precision', '?')})"
        )

    def target_dict(self) -> dict[str, Any]:
        """The target as stored in the predictor file and reported by ``--json``."""
        return {
            "target_variant": self.target.variant,
            "image_size": self.target.image_size,
            "num_classes": self.target.num_classes,
            "blocks": self.target.blocks,
        }

    def summary(self) -> dict[str, Any]:
        """What ``--json`` reports: target, device, chosen model and held-out figures."""
        return {
            "model": self.kind,
            "target": self.target_dict(),
            "device": self.target.device,
            "holdout": self.holdout,
            "candidates": self.candidates,
        }

    def report_text(self) -> str:
        """The held-out comparison of both models, for the terminal."""
        t = self.target
        lines = [
            f"latency predictor for {t.variant} ({t.image_size} px, {t.num_classes} classes) on "
            f"{self.device_text()}",
            f"held-out genotypes: {self.holdout.get('samples')} "
            f"(trained on {self.holdout.get('train_samples')})",
            "model     within 5%  within 10%  RMSE ms  mean abs err",
        ]
        for kind, row in self.candidates.items():
            mark = "  <- kept" if kind == self.kind else ""
            lines.append(
                f"{kind:8s}  {row['within_5pct']:8.1%}  {row['within_10pct']:9.1%}  "
                f"{row['rmse_ms']:7.3f}  {row['mape']:11.1%}{mark}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PREDICTOR_FORMAT,
            "version": PREDICTOR_VERSION,
            "model": self.kind,
            "target": self.target_dict(),
            "device": self.target.device,
            "holdout": self.holdout,
            "candidates": self.candidates,
            "features": list(FEATURE_NAMES),
            "fitted": self.fitted,
        }


def fit_predictor(
    measurements: Measurements, *, seed: int = 0, holdout: float = HOLDOUT_FRACTION
) -> Predictor:
    """Fit both models on a seeded split, keep the better one on the held-out genotypes, refit on all."""
    scale = measurements.target.scale()
    x = np.stack([features(g, scale) for g in measurements.genotypes])
    y = measurements.latency_ms
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = max(2, int(round(holdout * len(y))))
    test, train = order[:n_test], order[n_test:]
    if len(train) < MIN_TRAIN:
        raise PredictorError(
            f"{measurements.source}: {len(train)} models left to fit after holding out {n_test}; "
            f"a predictor needs at least {MIN_TRAIN}: measure more models or lower --holdout"
        )
    candidates = {}
    for kind in MODEL_KINDS:
        fitted = _fit(kind, x[train], y[train], seed)
        candidates[kind] = accuracy_report(_predict(fitted, x[test]), y[test])
    best = max(MODEL_KINDS, key=lambda k: (candidates[k]["within_10pct"], -candidates[k]["rmse_ms"]))
    report = {**candidates[best], "train_samples": int(len(train)), "split_seed": seed}
    return Predictor(measurements.target, best, _fit(best, x, y, seed), report, candidates)


def save_predictor(predictor: Predictor, path: str | os.PathLike[str]) -> Path:
    """Write the predictor file atomically."""
    target = Path(path)
    atomic_write_text(target, json.dumps(predictor.to_dict(), indent=2) + "\n")
    return target


def _checked_params(params: Any) -> dict[str, Any]:
    """The stored model, with types and tree links checked so evaluation cannot loop or crash."""
    if not isinstance(params, dict) or params.get("kind") not in MODEL_KINDS:
        raise ValueError("unknown model kind")
    n = len(FEATURE_NAMES)
    if params["kind"] == "table":
        coef = [float(v) for v in params["coef"]]
        values = [*coef, float(params["intercept"])]
        if len(coef) != n or not all(math.isfinite(v) and v >= 0 for v in values):
            raise ValueError("bad coefficients (a cost table holds finite, non-negative costs)")
        return {"kind": "table", "coef": coef, "intercept": float(params["intercept"])}
    trees = []
    for tree in params["trees"]:
        left, right = [int(v) for v in tree["left"]], [int(v) for v in tree["right"]]
        feature, threshold = [int(v) for v in tree["feature"]], [float(v) for v in tree["threshold"]]
        value = [float(v) for v in tree["value"]]
        size = len(left)
        if not (size == len(right) == len(feature) == len(threshold) == len(value)) or size == 0:
            raise ValueError("tree arrays of different lengths")
        for node in range(size):  # children come after their parent: no cycles
            if left[node] != -1 and not (
                node < left[node] < size and node < right[node] < size and 0 <= feature[node] < n
            ):
                raise ValueError("bad tree links")
        trees.append(
            {"left": left, "right": right, "feature": feature, "threshold": threshold, "value": value}
        )
    return {
        "kind": "boosted",
        "init": float(params["init"]),
        "learning_rate": float(params["learning_rate"]),
        "trees": trees,
    }


def load_predictor(path: str | os.PathLike[str]) -> Predictor:
    """Read a predictor file (one line on anything wrong)."""
    source = Path(path)
    data = read_json(source, expect=dict, max_bytes=64 * 2**20)
    if data.get("format") != PREDICTOR_FORMAT or data.get("version") != PREDICTOR_VERSION:
        raise PredictorError(f"{source}: not a nasdeploy latency predictor (version {PREDICTOR_VERSION})")
    if list(data.get("features") or []) != list(FEATURE_NAMES) or data.get("model") not in MODEL_KINDS:
        raise PredictorError(f"{source}: made by another version of the feature set; fit it again")
    try:
        t = data["target"]
        target = Target(
            str(t["target_variant"]),
            int(t["image_size"]),
            int(t["num_classes"]),
            dict(data.get("device") or {}),
            int(t.get("blocks", 5)),
        )
        fitted = _checked_params(data["fitted"])
        _predict(fitted, np.zeros((1, len(FEATURE_NAMES))))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise PredictorError(f"{source}: corrupt predictor ({type(exc).__name__}: {exc})") from None
    return Predictor(
        target, data["model"], fitted, dict(data.get("holdout") or {}), dict(data.get("candidates") or {})
    )
