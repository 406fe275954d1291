"""Who proposes the next genotype: the ``Strategy`` interface (propose / observe / resume),
its registry, RL (LSTM controller + PPO) and Optuna (TPE, random, NSGA-II).

May import: ``search.core``, ``search.space``, ``search.trials``, torch (RL), optuna.
"""
