"""Foundations every stage shares: one-line errors, atomic writes, the one JSON reader,
units on the command line and the run directory's file names.

May import: the standard library only (no torch, numpy or onnx).
"""
