"""Choosing a `tf.distribute` strategy: several workers from `TF_CONFIG`, several GPUs, or one
device."""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multi_worker")


def cluster_spec() -> tuple[dict, dict]:
    """(cluster, task) from the `TF_CONFIG` environment variable; ({}, {}) when unset."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return {}, {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from None
    return config.get("cluster", {}), config.get("task", {})


def num_workers() -> int:
    cluster, _ = cluster_spec()
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def is_chief() -> bool:
    """True for the process that writes outputs: the `chief`, else worker 0, else the only one."""
    cluster, task = cluster_spec()
    if not cluster:
        return True
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    return kind == "chief" or ("chief" not in cluster and kind == "worker" and index == 0)


def task_id() -> str:
    """`worker-1`, `chief-0`, ... for this process (`chief-0` without TF_CONFIG)."""
    _, task = cluster_spec()
    return f"{task.get('type', 'chief')}-{task.get('index', 0)}"


def make_strategy(kind: str = "auto") -> tf.distribute.Strategy:
    """The strategy for `kind`:

    - `auto`: `MultiWorkerMirroredStrategy` when `TF_CONFIG` names more than one worker,
      else `MirroredStrategy` over several GPUs, else the default (one device);
    - `multi_worker`: `MultiWorkerMirroredStrategy` (reads `TF_CONFIG`);
    - `mirrored`: `MirroredStrategy` over the local GPUs (or the CPU);
    - `default`: the current strategy (no distribution).

    Create it at program start, before other TensorFlow work: the multi-worker strategy must
    set up its collectives before any op runs.
    """
    if kind not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {kind!r}")
    if kind == "auto":
        if num_workers() > 1:
            kind = "multi_worker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()
