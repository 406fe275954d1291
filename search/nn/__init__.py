"""The torch side of a genotype: op modules (keyed by ``search.space.opnames``), the NASNet
builder, MACs and parameter counts, checkpoints, device choice and the ONNX export helper.

May import: ``search.core``, ``search.space``, ``search.runtime``, torch.
"""
