"""Precision policy, CPU thread settings and ``tf.distribute`` strategies.

``strategy``:

- ``default``: the current (single-device) strategy;
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over the local GPUs (or the
  CPU when there is none);
- ``multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy`` across the
  machines listed in the ``TF_CONFIG`` environment variable (each worker runs
  the same command with its own ``task.index``; worker 0 is the chief and
  writes checkpoints, logs and plots).

Batch size: ``batch_size`` is per replica by default, so the global batch
(what one optimizer step sees) is ``batch_size * num_replicas``; with
``batch_size_is_global: true`` it is the global batch and must divide by the
number of replicas.
"""

import json
import os

from fusionnet_tf.checks import check_choice
from fusionnet_tf.choices import PRECISIONS  # noqa: F401 (re-exported)

STRATEGIES = ("default", "mirrored", "multiworker")


def set_precision(precision):
    """Set the global Keras dtype policy (call before building the model).

    Under ``mixed_float16`` Keras's ``compile`` wraps the optimizer in a
    ``LossScaleOptimizer``; the model output stays float32 either way.

    Args:
        precision: ``"float32"``, ``"mixed_float16"`` or ``"mixed_bfloat16"``.

    Raises:
        ValueError: unknown ``precision``.
    """
    import keras

    check_choice("precision", precision, PRECISIONS)
    keras.mixed_precision.set_dtype_policy(precision)


def configure_threads(intra_op_threads=0, inter_op_threads=0):
    """Set TensorFlow's CPU thread pools; 0 keeps TensorFlow's default.

    Must run before TensorFlow executes its first op; later calls are ignored
    (TensorFlow raises RuntimeError, which is swallowed here).
    """
    import tensorflow as tf

    try:
        if intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        if inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    except RuntimeError:
        pass


def make_strategy(name="default"):
    """Return the ``tf.distribute.Strategy`` called ``name``.

    Args:
        name: ``"default"``, ``"mirrored"`` or ``"multiworker"``.

    Returns:
        A ``tf.distribute.Strategy``. Build and compile the model under its
        ``scope()``.

    Raises:
        ValueError: unknown ``name``, or ``multiworker`` without a valid
            ``TF_CONFIG`` environment variable.

    Example:
    >>> strategy = make_strategy("mirrored")
    >>> with strategy.scope():
    ...     model = build_fusionnet(base_filters=16)
    """
    check_choice("strategy", name, STRATEGIES)
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    check_tf_config(os.environ.get("TF_CONFIG"))  # "multiworker"
    return tf.distribute.MultiWorkerMirroredStrategy()


def check_tf_config(text):
    """Validate a ``TF_CONFIG`` JSON string for multi-worker training.

    Returns:
        The parsed dict.

    Raises:
        ValueError: missing, unparsable, or without ``cluster.worker`` and
            ``task``.
    """
    if not text:
        raise ValueError(
            "strategy 'multiworker' needs the TF_CONFIG environment variable "
            "(cluster.worker list and task index); received none"
        )
    try:
        tf_config = json.loads(text)
    except ValueError:
        raise ValueError(f"TF_CONFIG is not valid JSON; received {text!r}") from None
    if not isinstance(tf_config, dict) or "worker" not in tf_config.get("cluster", {}) \
            or "task" not in tf_config:
        raise ValueError(
            f"TF_CONFIG must hold 'cluster': {{'worker': [...]}} and 'task'; received {text!r}"
        )
    return tf_config


def worker_index():
    """Index of this worker in ``TF_CONFIG`` (0 when not multi-worker)."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return 0
    try:
        task = json.loads(text).get("task", {})
    except ValueError:
        return 0
    if task.get("type", "worker") not in ("worker", "chief"):
        return 0
    return int(task.get("index", 0)) if task.get("type", "worker") == "worker" else 0


def is_chief(strategy=None):
    """True on the process that writes files (worker 0, or single process)."""
    if strategy is None or not in_multi_worker_mode(strategy):
        return True
    return worker_index() == 0


def in_multi_worker_mode(strategy):
    """True when ``strategy`` spans more than one worker process (its cluster lists several tasks)."""
    resolver = strategy.cluster_resolver
    if resolver is None:
        return False
    cluster = resolver.cluster_spec()
    return sum(cluster.num_tasks(job) for job in cluster.jobs if job in ("chief", "worker")) > 1


def global_batch_size(batch_size, is_global, num_replicas):
    """Global batch size (one optimizer step) for ``num_replicas`` replicas.

    Args:
        batch_size: int >= 1 from the config.
        is_global: bool. True: ``batch_size`` is already global.
        num_replicas: int. ``strategy.num_replicas_in_sync``.

    Returns:
        int.

    Raises:
        ValueError: a global batch that does not divide by ``num_replicas``.

    Example:
    >>> global_batch_size(4, False, 2)
    8
    """
    if not is_global:
        return batch_size * num_replicas
    if batch_size % num_replicas:
        raise ValueError(
            f"config key 'batch_size'={batch_size} is global (batch_size_is_global: true) "
            f"and must divide by the {num_replicas} replicas"
        )
    return batch_size

