"""Every built-in genotype exports to a clean ONNX graph that ONNX Runtime runs exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from search.core.errors import NasdeployError
from search.nn.model import build_model
from search.nn.onnxio import export_onnx
from search.runtime.sessions import SessionSettings, create_session
from search.space.genotype import REFERENCE_GENOTYPES


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Run a few training batches so BN statistics are not at their defaults."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, model.scale.image_size, model.scale.image_size))
    return model.eval()


@pytest.mark.parametrize("name", sorted(REFERENCE_GENOTYPES))
@pytest.mark.parametrize("scale, size", [("1@48", 16), ("1@48", 65)])
def test_network_matches_onnxruntime(tmp_path, name, scale, size):
    model = _trained_looking(build_model(REFERENCE_GENOTYPES[name], scale, image_size=size,
                                         drop_path_prob=0.3, auxiliary=True))
    path = export_onnx(model, tmp_path / "net.onnx", image_size=size, opset=17)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = create_session(path, SessionSettings(device="cpu"))
    for batch in (1, 4):
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4


def test_graph_avoids_known_runtime_traps(tmp_path):
    model = build_model(REFERENCE_GENOTYPES["nasnet-a"], "1@48", image_size=17, drop_path_prob=0.5)
    model.set_drop_path_progress(1.0)
    path = export_onnx(model, tmp_path / "net.onnx", image_size=17)
    graph = onnx.load(str(path)).graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    ops = {node.op_type for node in graph.node}
    assert not ops & {"RandomUniformLike", "RandomUniform", "Bernoulli", "Dropout"}  # no drop-path
    assert "Shape" not in ops  # no padding computed at run time
    for node in graph.node:
        if node.op_type == "AveragePool":
            attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
            assert attrs.get("count_include_pad", 0) == 0
        if node.op_type == "Pad":
            pads = constants[node.input[1]]  # static
            assert (pads >= 0).all()  # crops are slices, never negative pads
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"


def test_old_opset_is_refused(tmp_path):
    model = build_model(REFERENCE_GENOTYPES["lite"], "1@48", image_size=16)
    with pytest.raises(NasdeployError, match="opset 13 is too old"):
        export_onnx(model, tmp_path / "net.onnx", image_size=16, opset=13)
    assert not list(tmp_path.iterdir())
