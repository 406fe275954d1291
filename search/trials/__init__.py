"""The record of evaluated candidates (``trials.jsonl``) and the rules that select among them.

May import: ``search.core``, ``search.space``. Torch-free and matplotlib-free (the app reads it).
"""
