"""Scoring a candidate: the proxy child's accuracy, its deployment latency and MACs,
and the MnasNet reward (pure functions of plain values).

May import: ``search.core``, ``search.space``, ``search.runtime``, ``search.nn``,
``search.data``, ``search.training``.
"""
