"""One search as a unit of work: its config, run directory and lock, the loop that drives a
strategy with an evaluator, and the report (genotype, Pareto front, plots, summary).

May import: every other ``search`` sub-package. Latency and accuracy reach the loop as
functions, so ``experiment.loop`` itself needs no runtime.
"""
