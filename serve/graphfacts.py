"""What an ONNX graph says about its network: weights, multiply-accumulates and depth.

The model table (:mod:`serve.table`) takes parameters and MACs from the model card when the
export recorded them, and counts them here otherwise; the depth always comes from here.
Torch-free: ``onnx`` only.

- **weights**: elements of the graph's weight initializers: floating-point initializers, plus
  integer ones that a ``DequantizeLinear`` turns into weights (INT8 QDQ graphs); the scales
  and zero points of (de)quantization and integer shape constants are not weights. The export
  folds BatchNorm into the convolutions before it writes the file, so this can differ from the
  trained network's parameter count the card records.
- **MACs**: multiply-accumulates of one image in the ``Conv`` (and ``ConvTranspose``), ``Gemm``
  and ``MatMul`` nodes, from ONNX shape inference at batch 1 (pooling, normalisation and
  activations are not counted, as in the card); ``None`` when a shape stays unknown.
- **depth**: the most weighted layers (:data:`LAYER_OPS`: convolutions and matrix products)
  that one path from the input to the output passes through.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

LAYER_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "Gemm", "MatMul",
                       "MatMulInteger", "QLinearMatMul"})
"""Operators that count as one layer of depth: the weighted layers of a CNN."""
_QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16 (onnx.TensorProto)


@dataclass(frozen=True)
class GraphFacts:
    """What :func:`graph_facts` read from one graph (``macs`` is ``None`` when not countable)."""

    weights: int
    macs: int | None
    depth: int
    nodes: int


def graph_facts(model: Any) -> GraphFacts:
    """Weights, MACs per image, depth and node count of an ``onnx.ModelProto``."""
    graph = model.graph
    return GraphFacts(weights=count_weights(graph), macs=count_macs(model), depth=depth(graph),
                      nodes=len(graph.node))


def _numel(dims: Iterable[int]) -> int:
    return math.prod(int(d) for d in dims)


def count_weights(graph: Any) -> int:
    """Elements of the weight initializers of ``graph`` (see the module docstring)."""
    dequantized, quant_params = set(), set()
    for node in graph.node:
        if node.op_type in _QUANT_OPS:
            if node.op_type == "DequantizeLinear" and node.input:
                dequantized.add(node.input[0])
            quant_params.update(node.input[1:])
    total = 0
    for init in graph.initializer:
        if init.name in quant_params and init.name not in dequantized:
            continue
        if init.data_type in _FLOAT_TYPES or init.name in dequantized:
            total += _numel(init.dims)
    return total


def depth(graph: Any) -> int:
    """The most :data:`LAYER_OPS` nodes on one path from a graph input to a graph output.

    ONNX stores nodes in topological order, so one pass carries each tensor's depth forward.
    """
    reached: dict[str, int] = {}
    for node in graph.node:
        below = max((reached.get(name, 0) for name in node.input if name), default=0)
        here = below + (node.op_type in LAYER_OPS)
        for name in node.output:
            reached[name] = here
    return max((reached.get(out.name, 0) for out in graph.output), default=0)


def count_macs(model: Any) -> int | None:
    """Multiply-accumulates of one image in the convolutions and matrix products of ``model``."""
    import onnx

    shapes = _static_shapes(model)
    if shapes is None:
        return None
    inits = {init.name: tuple(int(d) for d in init.dims) for init in model.graph.initializer}
    shapes = {**inits, **shapes}
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            return None
        if node.op_type in ("Conv", "ConvTranspose"):
            weight = shapes.get(node.input[1])
            if weight is None or len(weight) < 2:
                return None
            if node.op_type == "Conv":  # weight (Cout, Cin/groups, k...): each output sums Cin/g * k
                total += _numel(out) * _numel(weight[1:])
            else:  # weight (Cin, Cout/groups, k...): each input element feeds Cout/g * k outputs
                source = shapes.get(node.input[0])
                if source is None:
                    return None
                total += _numel(source) * _numel(weight[1:])
            continue
        a = shapes.get(node.input[0])
        if a is None or not a:
            return None
        trans_a = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "transA"), 0)
        inner = a[0] if node.op_type == "Gemm" and trans_a else a[-1]
        total += _numel(out) * inner
    return total


def _static_shapes(model: Any) -> dict[str, tuple[int, ...]] | None:
    """Every tensor's shape at batch 1 by ONNX shape inference (``None``: inference failed)."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # shape inference refuses some graphs; MACs are then unknown, not an error
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        dims = tensor.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    return shapes
