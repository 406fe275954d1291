"""nasdeploy's search: the space, the network builder and everything that finds a cell.

Sub-packages, lowest layer first; each may import only the ones listed before it
(``tests/test_layering.py`` holds this, and it loads no torch where a package says so):

- ``core``: errors, atomic files, the one JSON reader, units, run-directory names. Stdlib only.
- ``space``: op names, the genotype JSON, ``SearchSpace``, N@F scaling, the model card,
  cells as text and as a drawing. Torch-free.
- ``trials``: the trial record (``trials.jsonl``) and the selection rules. Torch-free.
- ``runtime``: the one ONNX Runtime session factory and the one latency timer. Torch-free.
- ``nn``: torch op modules, the NASNet builder, MACs/params, checkpoint, ONNX export helper.
- ``data``: datasets and the one image pipeline (``data.images`` is torch-free).
- ``training``: the shared training loop and final training of a genotype.
- ``evaluation``: the proxy child, deployment latency and the MnasNet reward.
- ``strategies``: the strategy interface, RL (LSTM + PPO) and Optuna samplers.
- ``experiment``: the search config, run directory, the loop and its report.

The command-line entry points stay at ``search.run``, ``search.train`` and ``search.info``.
``search`` never imports ``export``, ``serve`` or ``app``.
"""
