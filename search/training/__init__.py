"""Training: the shared epoch loop (SGD, cosine schedule, drop-path, auxiliary head) used by
proxy children and by final training of a genotype.

May import: ``search.core``, ``search.space``, ``search.nn``, ``search.data``.
"""
