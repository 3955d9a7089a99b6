"""Distributed training on Ray Train: one loop for every model (``ocrjobs train``, ``ocrjobs export``).

Modules (import them by name; this package module imports nothing, so the CLI stays fast):

* ``config``: :class:`~ocrjobs.training.config.TrainConfig`, every field documented.
* ``task``: the :class:`~ocrjobs.training.task.TrainTask` protocol between the loop and a task;
  ``tasks``: the ``TASKS`` table; ``detection`` and ``recognition``: the two tasks.
* ``data``: config -> items (driver) -> Ray Datasets; ``rows``: the CPU stage (items -> numpy rows).
* ``loop``: ``train_func``, the per-worker PyTorch loop; ``optim``: optimisers, schedules, EMA.
* ``checkpoint``: checkpoint files and run folders; ``progress``: ``metrics.csv`` and progress lines.
* ``trainer``: the driver (``fit``, ``dry_run``); ``export``: checkpoint -> model folder with a card.

See ``cluster/TRAINING.md`` for running it on a cluster.
"""
