"""The model card: one schema for checkpoints, ONNX metadata and engine sidecars."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from export.metadata import retag_precision, write_card
from search.core.rundir import sidecar_path
from search.nn.checkpoint import build_from_card, load_checkpoint, save_checkpoint
from search.space.card import CARD_VERSION, CardError, ModelCard
from search.space.genotype import NASNET_A
from serve.metadata import from_props, read_onnx_card, read_sidecar_card, to_props


def _card(**overrides) -> ModelCard:
    values = dict(genotype=NASNET_A, scale="1@48", image_size=8, resize=10, class_names=["cat", "dog", "emu"],
                  mean=(0.1, 0.2, 0.3), std=(0.5, 0.4, 0.3), auxiliary=True, dataset="toy", precision="fp16",
                  params=1234, macs=56789, accuracy=0.75, weights="trained")
    values.update(overrides)
    return ModelCard(**values)


def _tiny_onnx(path, num_classes: int = 3, size: int = 8) -> None:
    """A real NCHW classifier: global average pool, then a linear layer."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, num_classes],
                                np.arange(3 * num_classes, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="producer.note", value="kept")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def test_dict_and_json_round_trip():
    card = _card()
    data = card.to_dict()
    assert data["format_version"] == CARD_VERSION and data["genotype"] == NASNET_A.to_dict()
    assert json.loads(json.dumps(data)) == data  # JSON-ready as it is
    assert ModelCard.from_dict(data) == card
    assert ModelCard.from_json(card.to_json()) == card
    assert from_props(to_props(card)) == card


def test_defaults_fill_in_labels_and_resize():
    card = ModelCard(image_size=16, mean=[0.5] * 3, std=[0.5] * 3, num_classes=3)
    assert card.class_names == ("0", "1", "2") and card.resize_to == 16 and card.genotype is None
    assert ModelCard(image_size=16, mean=[0.5] * 3, std=[0.5] * 3, class_names=["a"]).num_classes == 1
    assert from_props(to_props(card)) == card


def test_card_in_a_real_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    _tiny_onnx(path)
    card = _card()
    write_card(path, card, doc="tiny")
    assert read_onnx_card(path) == card
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["producer.note"] == "kept" and proto.doc_string == "tiny"
    assert props["nasdeploy.image_size"] == "8" and props["nasdeploy.weights"] == "trained"
    assert json.loads(props["nasdeploy.class_names"]) == ["cat", "dog", "emu"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert from_props(session.get_modelmeta().custom_metadata_map) == card  # what serve reads
    assert session.run(None, {"input": np.ones((2, 3, 8, 8), np.float32)})[0].shape == (2, 3)
    retag_precision(path, "int8")
    assert read_onnx_card(path) == _card(precision="int8")


def test_metadata_written_before_the_card_still_loads():
    """Version-1 ``metadata_props`` (as exported models carry them) and v1 sidecars."""
    props = {"nasdeploy.image_size": "8", "nasdeploy.mean": "[0.1, 0.2, 0.3]",
             "nasdeploy.std": "[0.5, 0.4, 0.3]", "nasdeploy.class_names": '["cat", "dog", "emu"]',
             "nasdeploy.resize": "10",
             "nasdeploy.layout": "NCHW", "nasdeploy.channel_order": "RGB", "nasdeploy.precision": "fp16",
             "nasdeploy.scale": "1@48", "nasdeploy.genotype": json.dumps(NASNET_A.to_dict()),
             "nasdeploy.params": "1234", "nasdeploy.macs": "56789", "nasdeploy.accuracy": "0.75",
             "nasdeploy.dataset": "toy", "nasdeploy.format_version": "1", "nasdeploy.weights": "trained",
             "onnx.other": "ignored"}
    assert from_props(props) == _card(auxiliary=False)
    old_sidecar = {**_card(auxiliary=False).to_dict(), "format_version": 1,
                   "extra": {"nasdeploy.weights": "trained"}}  # what ModelInfo.to_json_dict() wrote
    del old_sidecar["weights"], old_sidecar["num_classes"], old_sidecar["auxiliary"]
    assert ModelCard.from_dict(old_sidecar) == _card(auxiliary=False)


def test_engine_sidecar(tmp_path):
    card = _card(precision="int8")
    path = sidecar_path(tmp_path / "model.engine")
    assert path.name == "model.engine.json"
    path.write_text(json.dumps({"format": "nasdeploy-engine", "model_info": card.to_dict(), "build": {}}))
    assert read_sidecar_card(path) == card
    with pytest.raises(CardError, match="not found"):
        read_sidecar_card(tmp_path / "missing.engine.json")


@pytest.mark.parametrize(("change", "fragment"), [
    ({"image_size": None}, "missing image_size"),
    ({"class_names": None, "num_classes": None}, "missing class_names"),
    ({"image_size": "16"}, "'image_size' must be an integer, got '16'"),
    ({"image_size": True}, "'image_size' must be an integer"),
    ({"mean": [0.5, 0.5]}, "'mean' must be a list of 3 numbers"),
    ({"std": [0.5, 0.0, 0.5]}, "'std' must be positive numbers"),
    ({"class_names": ["a", 2, "c"]}, "'class_names' must be a list of strings"),
    ({"num_classes": 5}, "3 class_names for num_classes 5"),
    ({"accuracy": "high"}, "'accuracy' must be a number"),
    ({"auxiliary": "yes"}, "'auxiliary' must be true or false"),
    ({"genotype": {"normal": []}}, "genotype: invalid genotype"),
    ({"format_version": CARD_VERSION + 1}, "unsupported model card version"),
])
def test_bad_cards_are_one_line_errors(change, fragment):
    data = {**_card().to_dict(), **change}
    data = {k: v for k, v in data.items() if v is not None or k not in change}
    with pytest.raises(CardError) as info:
        ModelCard.from_dict(data, "runs/x/checkpoint.pt")
    message = str(info.value)
    assert message.startswith("runs/x/checkpoint.pt: ") and fragment in message and "\n" not in message


def test_bad_containers_and_props():
    with pytest.raises(CardError, match="must be a JSON object, got list"):
        ModelCard.from_dict([1, 2])
    with pytest.raises(CardError, match=r"^card.json .*line 1"):
        ModelCard.from_json("{not json", "card.json")
    with pytest.raises(CardError, match="metadata field 'nasdeploy.image_size' is malformed"):
        from_props({**to_props(_card()), "nasdeploy.image_size": "sixteen"})
    with pytest.raises(CardError, match="no nasdeploy metadata .*nasdeploy.mean.*export.onnx"):
        from_props({k: v for k, v in to_props(_card()).items() if k != "nasdeploy.mean"})


def test_checkpoint_spec_is_the_card(tmp_path):
    card = _card(image_size=16, resize=None, precision="fp32", params=None, macs=None, accuracy=None,
                 weights=None)
    model = build_from_card(card).eval()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, card)
    assert torch.load(path, weights_only=True)["spec"] == card.to_dict()
    loaded, spec, _ = load_checkpoint(path)
    assert spec == card
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_checkpoints_written_before_the_card_still_load(tmp_path):
    card = _card(image_size=16, auxiliary=False, resize=None, precision="fp32", params=None, macs=None,
                 accuracy=None, weights=None)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, build_from_card(card), card)
    raw = torch.load(path, weights_only=True)
    raw["spec"] = {"genotype": NASNET_A.to_dict(), "scale": "1@48", "image_size": 16, "num_classes": 3,
                   "class_names": ["cat", "dog", "emu"], "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.4, 0.3],
                   "auxiliary": False, "dataset": "toy"}  # what ModelSpec.to_dict() wrote
    torch.save(raw, path)
    assert load_checkpoint(path)[1] == card
    raw["spec"]["mean"] = "grey"
    torch.save(raw, path)
    with pytest.raises(CardError, match=r"checkpoint spec: model card field 'mean'") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
