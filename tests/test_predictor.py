"""The latency predictor: features that follow the real network, fitting, the file, refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from search.evaluation.predictor import (
    FEATURE_NAMES,
    MEASUREMENTS_FORMAT,
    PredictorError,
    accuracy_report,
    features,
    fit_predictor,
    load_measurements,
    load_predictor,
    save_predictor,
)
from search.space.genotype import REFERENCE_GENOTYPES, Block, Cell, Genotype
from search.space.scale import parse_scale
from search.space.searchspace import SearchSpace

SPACE = SearchSpace(5)


def _random(n: int, seed: int = 0) -> list[Genotype]:
    rng = np.random.default_rng(seed)
    return [SPACE.decode([int(rng.integers(d.size)) for d in SPACE.decisions()]) for _ in range(n)]


@pytest.mark.parametrize(("variant", "size"), [("2@192", 16), ("cifar", 32), ("mobile", 224)])
def test_analytic_macs_follow_the_built_network(variant: str, size: int) -> None:
    from search.nn.cost import count_macs
    from search.nn.model import build_model

    scale = parse_scale(variant, size)
    for genotype in [REFERENCE_GENOTYPES["nasnet-a"], *_random(3, seed=7)]:
        analytic = features(genotype, scale)[FEATURE_NAMES.index("total_macs")]
        real = count_macs(build_model(genotype, scale, num_classes=10), size)
        assert 0.8 < analytic / real < 1.2, (variant, analytic, real)


def test_features_do_not_depend_on_branch_order() -> None:
    genotype = _random(1, seed=3)[0]
    block = genotype.normal.blocks[0]
    swapped_block = Block((block.inputs[1], block.inputs[0]), (block.ops[1], block.ops[0]), block.combine)
    swapped = Genotype(
        Cell((swapped_block, *genotype.normal.blocks[1:]), genotype.normal.concat), genotype.reduce
    )
    scale = parse_scale("2@192", 16)
    assert np.array_equal(features(genotype, scale), features(swapped, scale))
    assert not np.array_equal(features(genotype, scale), features(_random(1, seed=4)[0], scale))


def _measurements(
    path: Path, genotypes: list[Genotype], latencies: np.ndarray, variant: str = "2@192", size: int = 16
) -> Path:
    data = {
        "format": MEASUREMENTS_FORMAT,
        "version": 1,
        "panel": {"target_variant": variant, "image_size": size, "num_classes": 10, "blocks": 5, "batch": 1},
        "device": {
            "cpu": "test",
            "threads": 1,
            "runtime": "onnxruntime",
            "provider": "CPUExecutionProvider",
            "precision": "fp32",
        },
        "settings": {"warmup": 5, "repeats": 30, "statistic": "median"},
        "results": [
            {"id": f"p{i:03d}", "genotype": g.to_dict(), "median_ms": float(v)}
            for i, (g, v) in enumerate(zip(genotypes, latencies, strict=True))
        ],
    }
    path.write_text(json.dumps(data))
    return path


def _per_op_latency(genotypes: list[Genotype], scale) -> np.ndarray:
    """A latency made of per-op costs (a cost per instance and per MAC of each op type) plus 2 % noise."""
    rng = np.random.default_rng(11)
    weights = np.zeros(len(FEATURE_NAMES))
    for i, name in enumerate(FEATURE_NAMES):
        if name.endswith(":count"):
            weights[i] = rng.uniform(0.002, 0.01)
        elif name.endswith(":macs"):
            weights[i] = rng.uniform(1e-9, 5e-9)
    clean = np.array([features(g, scale) @ weights + 0.05 for g in genotypes])
    return clean * rng.normal(1.0, 0.02, size=len(clean))


def test_fit_recovers_a_per_op_cost_model_and_reports_held_out_accuracy(tmp_path: Path) -> None:
    genotypes = _random(120, seed=1)
    latencies = _per_op_latency(genotypes, parse_scale("2@192", 16))
    predictor = fit_predictor(load_measurements(_measurements(tmp_path / "m.json", genotypes, latencies)))
    assert set(predictor.candidates) == {"table", "boosted"}
    assert predictor.holdout["within_10pct"] >= 0.95 and predictor.holdout["samples"] == 30
    fresh = _random(40, seed=2)
    truth = _per_op_latency(fresh, parse_scale("2@192", 16))
    report = accuracy_report(np.array([predictor.predict(g) for g in fresh]), truth)
    assert report["within_10pct"] >= 0.9


def test_the_file_round_trips_and_predicts_the_same(tmp_path: Path) -> None:
    genotypes = _random(40, seed=5)
    latencies = _per_op_latency(genotypes, parse_scale("2@192", 16))
    predictor = fit_predictor(load_measurements(_measurements(tmp_path / "m.json", genotypes, latencies)))
    path = save_predictor(predictor, tmp_path / "p.json")
    loaded = load_predictor(path)
    assert "pickle" not in path.read_text()  # a predictor is plain data: loading it runs no code
    assert loaded.kind == predictor.kind and loaded.target == predictor.target
    for genotype in _random(5, seed=9):
        assert loaded.predict(genotype) == pytest.approx(predictor.predict(genotype), rel=1e-12)
    loaded.check_target("2@192", 16, 10)
    with pytest.raises(PredictorError, match="was made for 2@192 at 16 px"):
        loaded.check_target("cifar", 32, 10)
    with pytest.raises(PredictorError, match="with 10 classes"):
        loaded.check_target("2@192", 16, 100)


@pytest.mark.parametrize("damage", ["format", "features", "links", "nan", "truncate"])
def test_a_damaged_predictor_is_one_line(tmp_path: Path, damage: str) -> None:
    genotypes = _random(20, seed=6)
    latencies = _per_op_latency(genotypes, parse_scale("2@192", 16))
    data = fit_predictor(
        load_measurements(_measurements(tmp_path / "m.json", genotypes, latencies))
    ).to_dict()
    data["fitted"] = fit_predictor.__globals__["_fit"](
        "boosted", np.stack([features(g, parse_scale("2@192", 16)) for g in genotypes]), latencies, 0
    )
    text = json.dumps(data)
    if damage == "format":
        text = text.replace("nasdeploy-latency-predictor", "something-else")
    elif damage == "features":
        data["features"] = data["features"][:-1]
        text = json.dumps(data)
    elif damage == "links":
        data["fitted"]["trees"][0]["left"][0] = 0  # a node pointing at itself would loop forever
        text = json.dumps(data)
    elif damage == "nan":
        text = text.replace('"init": ', '"init": NaN, "x": ', 1)
    else:
        text = text[: len(text) // 2]
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(Exception) as info:
        load_predictor(path)
    assert str(info.value).count("\n") == 0 and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="x"), "not a nasdeploy latency measurements file"),
        (lambda d: d["panel"].pop("image_size"), "panel lacks a valid target"),
        (lambda d: d["results"][0].update(median_ms=-1), "must be a positive number"),
        (lambda d: d["results"][1].update(genotype={"normal": 3}), "results[1] is malformed"),
        (lambda d: d.update(results=d["results"][:3]), "at least 8"),
    ],
)
def test_bad_measurements_are_one_line(tmp_path: Path, edit, message: str) -> None:
    genotypes = _random(10, seed=8)
    path = _measurements(tmp_path / "m.json", genotypes, np.linspace(0.2, 0.4, 10))
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(PredictorError, match=re.escape(message)):
        load_measurements(path)


def test_the_cost_table_never_predicts_a_negative_latency(tmp_path: Path) -> None:
    genotypes = _random(60, seed=12)
    latencies = _per_op_latency(genotypes, parse_scale("2@192", 16))
    predictor = fit_predictor(load_measurements(_measurements(tmp_path / "m.json", genotypes, latencies)))
    fitted = fit_predictor.__globals__["_fit"](
        "table", np.stack([features(g, parse_scale("2@192", 16)) for g in genotypes]), latencies, 0
    )
    assert min(fitted["coef"]) >= 0 and fitted["intercept"] >= 0
    pools = Cell(tuple(Block((0, 1), ("avg_pool_3x3", "max_pool_3x3")) for _ in range(5)))
    identities = Cell(tuple(Block((0, 1), ("identity", "identity")) for _ in range(5)))
    for extreme in (Genotype(pools, pools), Genotype(identities, identities)):
        assert predictor.predict(extreme) > 0


def test_a_predictor_for_other_cells_or_a_tiny_split_is_one_line(tmp_path: Path) -> None:
    genotypes = _random(10, seed=13)
    path = _measurements(tmp_path / "m.json", genotypes, _per_op_latency(genotypes, parse_scale("2@192", 16)))
    predictor = fit_predictor(load_measurements(path))
    with pytest.raises(PredictorError, match="cells of 5 blocks, not 2"):
        predictor.check_target("2@192", 16, 10, blocks=2)
    with pytest.raises(PredictorError, match="models left to fit"):
        fit_predictor(load_measurements(path), holdout=0.9)


def test_a_non_positive_latency_is_never_feasible() -> None:
    from search.evaluation.reward import RewardConfig, is_feasible

    config = RewardConfig(5.0)
    assert is_feasible(4.0, config) and not is_feasible(-9.0, config) and not is_feasible(0.0, config)
