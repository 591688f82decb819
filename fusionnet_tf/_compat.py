"""Every use of a private Keras / TensorFlow internal, in one place.

fusionnet-tf uses public Keras 3 / TensorFlow APIs everywhere else. The
functions below are the few places where no public API does the job; each
says what it relies on, why, and which upstream issue or limitation forces
it. ``tests/test_compat.py`` checks each of these internals (the attribute
exists, has the signature used here and behaves as assumed), so a Keras or
TensorFlow upgrade that changes one fails there, by name, instead of
silently changing training or inference.

Tested with TensorFlow 2.21 and Keras 3.15; ``setup.cfg`` declares the
supported range (``TESTED_RANGES`` below mirrors it and the test checks the
installed versions against it).

Keras and TensorFlow are imported inside the functions, so importing this
module stays cheap.
"""

import types

# package -> (lowest supported version, first version not yet tested); as in setup.cfg
TESTED_RANGES = {"tensorflow": ((2, 16), (2, 22)), "keras": ((3, 10), (3, 16))}

_PATCHED = "_fusionnet_patched"


# --------------------------------------------------------------------------- #
# Functional-graph structure (inference/optimize.py)
# --------------------------------------------------------------------------- #
# Keras 3 has no public API for "which layer produced this symbolic tensor" or
# "how many times is this layer called / read": ``Functional`` keeps them in
# ``KerasTensor._keras_history`` and ``Operation._inbound_nodes`` /
# ``_outbound_nodes`` (keras/src/ops/node.py, keras/src/ops/operation.py).
# Folding BatchNormalization into the preceding convolution needs both.


def producer(tensor):
    """The layer (operation) that produced a symbolic ``KerasTensor``, or None.

    Relies on ``KerasTensor._keras_history.operation``.
    """
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None


def call_count(layer):
    """How many times ``layer`` is called in the functional graphs it belongs to.

    Relies on ``Operation._inbound_nodes`` (one node per call).
    """
    return len(layer._inbound_nodes)


def consumer_count(layer):
    """How many layer calls read an output of ``layer``.

    Relies on ``Operation._outbound_nodes`` (one node per consuming call).
    """
    return len(layer._outbound_nodes)


def run_through_graph(model, inputs, call_fn):
    """Run a functional ``model`` on ``inputs``, calling ``call_fn(layer, *args, **kwargs)`` per layer.

    Used to count convolution FLOPs for an input size the model was not built
    with (``compute_output_spec`` per layer, no weights touched). Relies on
    ``Functional._run_through_graph(inputs, operation_fn, call_fn)``
    (keras/src/ops/function.py); the public ``clone_model(call_function=...)``
    would rebuild every layer just to read shapes.
    """
    return model._run_through_graph(inputs, operation_fn=lambda layer: layer, call_fn=call_fn)


# --------------------------------------------------------------------------- #
# Replacing one layer's computation (training/fused_batchnorm.py)
# --------------------------------------------------------------------------- #
# The fused BatchNormalization kernel must run *inside* the stock
# ``keras.layers.BatchNormalization`` so that saved ``.keras`` files keep the
# plain Keras class (a subclass would need custom objects to reload). Keras 3
# offers no hook for that; this binds a function as the instance's ``call``,
# which ``Layer.__call__`` looks up on the instance (keras/src/layers/layer.py).


def replace_call(layer, function):
    """Make ``layer(...)`` run ``function(layer, *args, **kwargs)``; once per layer.

    Args:
        layer: a built ``keras.layers.Layer``.
        function: callable with the signature of the layer class's ``call``
            plus the layer as first argument; it may call
            ``type(layer).call(layer, ...)`` for Keras's own computation.

    Returns:
        bool: True if the call was replaced now, False if it already was.
    """
    if getattr(layer, _PATCHED, False):
        return False
    layer.call = types.MethodType(function, layer)
    object.__setattr__(layer, _PATCHED, True)  # not a tracked Keras attribute
    return True


# --------------------------------------------------------------------------- #
# Multi-worker training (training/run.py, training/strategy.py)
# --------------------------------------------------------------------------- #
# keras-team/keras#20585: Keras 3's TensorFlow trainer does not run ``fit``
# under ``tf.distribute.MultiWorkerMirroredStrategy``. Two places fail:
# (1) ``_maybe_symbolic_build`` averages the first data batch across replicas
# with ``strategy.reduce`` to learn shapes ("Attempt to convert a value
# (PerReplica...)"); (2) ``reduce_per_replica(..., "auto")`` reduces the
# scalar step logs with ``strategy.reduce("MEAN", v, axis=0)`` ("Invalid
# reduction dimension 0 for input with 0 dimensions").


def symbolic_build_from(model, batch):
    """Make ``model.fit`` build its state from ``batch`` instead of the first distributed batch.

    The build only needs shapes, so a zero batch shaped like the data is
    enough. Replaces the instance attribute ``model._maybe_symbolic_build``
    (``TensorFlowTrainer._maybe_symbolic_build(iterator=None,
    data_batch=None)``, called by ``fit`` before the first step).

    Args:
        model: compiled ``keras.Model``.
        batch: tuple of NumPy arrays, one per element of the dataset.
    """
    original = model._maybe_symbolic_build

    def symbolic_build_from_batch(iterator=None, data_batch=None):
        return original(data_batch=batch if data_batch is None else data_batch)

    model._maybe_symbolic_build = symbolic_build_from_batch


def patch_multiworker_reduce():
    """Average scalar step logs across workers with ``axis=None`` (see keras-team/keras#20585).

    Wraps ``keras.src.backend.tensorflow.trainer.reduce_per_replica``, which
    the trainer's step functions look up as a module global at trace time;
    only rank-0 values under a multi-worker strategy (as Keras's own
    ``_collective_all_reduce_multi_worker`` decides) with the ``"auto"`` or
    ``"mean"`` reduction are changed, everything else goes to the original.
    Idempotent.
    """
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, _PATCHED, False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if not trainer._collective_all_reduce_multi_worker(strategy) \
                or reduction not in ("auto", "mean"):
            return original(values, strategy, reduction)

        def reduce_one(value):
            local = strategy.experimental_local_results(value)
            if local and getattr(local[0], "shape", None) is not None \
                    and local[0].shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original(value, strategy, reduction)

        return trainer.tree.map_structure(reduce_one, values)

    setattr(reduce_per_replica, _PATCHED, True)
    trainer.reduce_per_replica = reduce_per_replica


# --------------------------------------------------------------------------- #
# Operators of a LiteRT model (export/litert.py)
# --------------------------------------------------------------------------- #
# Neither ``ai_edge_litert.interpreter.Interpreter`` (2.x) nor
# ``tf.lite.Interpreter`` has a public way to list a model's operators: the
# public ``get_tensor_details`` lists tensors only, and
# ``tf.lite.experimental.Analyzer.analyze`` prints a text report whose
# docstring says not to parse it. ``Interpreter._get_ops_details()`` returns
# one dict per operator with its ``op_name`` (``"MAX_POOL_2D"``, ...). The
# Predictor needs the number of 2x2 pooling ops of a ``.tflite`` model to align
# tiles to the network's pooling grid (16 for FusionNet depth 4, 32 for FCNs).


def litert_op_names(interpreter):
    """Builtin operator names of a LiteRT interpreter's model, in execution order.

    Relies on ``Interpreter._get_ops_details()`` (a list of dicts with key
    ``"op_name"``), present in ``ai_edge_litert`` and ``tf.lite``.

    Args:
        interpreter: ``ai_edge_litert.interpreter.Interpreter`` or
            ``tf.lite.Interpreter``.

    Returns:
        list of str, e.g. ``["CONV_2D", "MAX_POOL_2D", ...]``.
    """
    return [op["op_name"] for op in interpreter._get_ops_details()]
