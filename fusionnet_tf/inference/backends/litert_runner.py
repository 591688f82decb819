"""LiteRT runtime: ``.tflite`` files (from ``fusionnet export --format litert``).

Run by ``ai_edge_litert.interpreter.Interpreter`` when ai-edge-litert is
installed, else by ``tf.lite.Interpreter``. The converted models keep dynamic
(batch, H, W); ``LiteRTRunner`` resizes the input tensor to each batch it is
called with.
"""

import warnings
from pathlib import Path

import numpy as np


def load(path, num_threads=None):
    """A ``LiteRTRunner`` of the ``.tflite`` file ``path``."""
    return LiteRTRunner(path, num_threads=num_threads)


def interpreter_class():
    """``ai_edge_litert.interpreter.Interpreter``, else ``tf.lite.Interpreter``."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter


def _pooling_multiple(interpreter):
    """2**(number of pooling ops): the side multiple of a network of 2x2 poolings.

    FusionNet, U-Net and the FCNs pool with 2x2 windows of stride 2 only.
    None, with a RuntimeWarning giving the reason, if the interpreter cannot
    list its ops (see ``fusionnet_tf._compat.litert_op_names``): the Predictor
    then aligns tiles to 1 unless it is given ``align``.
    """
    from fusionnet_tf._compat import litert_op_names

    try:
        names = litert_op_names(interpreter)
    except (AttributeError, KeyError, TypeError) as exc:
        warnings.warn(
            f"cannot list the ops of the LiteRT model ({type(exc).__name__}: {exc}; "
            f"{type(interpreter).__module__} changed the private _get_ops_details), so its "
            "pooling multiple is unknown and tiles are not aligned to the pooling grid; pass "
            "align=2**depth (e.g. --align 16 for FusionNet depth 4, 32 for FCNs)",
            RuntimeWarning, stacklevel=3)
        return None
    pools = sum(name in ("MAX_POOL_2D", "AVERAGE_POOL_2D") for name in names)
    return 2**pools


class LiteRTRunner:
    """Run a ``.tflite`` membrane model on float32 (B, H, W, 1) batches.

    ``input_multiple`` (int or None): ``2**`` the number of 2x2 pooling ops,
    the side multiple the Predictor aligns tiles to. ``spatial_dims``: 2
    (LiteRT exports are 2D only).

    Not thread-safe: one runner per thread.

    Args:
        model: str/Path of a ``.tflite`` file, or its bytes.
        num_threads: optional int for the interpreter.

    Raises:
        FileNotFoundError: ``model`` is a path that is not a file.

    Example:
    >>> runner = LiteRTRunner("fusionnet_int8.tflite")
    >>> probability = runner(np.zeros((1, 512, 512, 1), "float32"))
    """

    spatial_dims = 2

    def __init__(self, model, num_threads=None):
        Interpreter = interpreter_class()
        if isinstance(model, (bytes, bytearray)):
            self.interpreter = Interpreter(model_content=bytes(model), num_threads=num_threads)
        else:
            if not Path(model).is_file():
                raise FileNotFoundError(f"LiteRT model not found: {model}")
            self.interpreter = Interpreter(model_path=str(model), num_threads=num_threads)
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.shape = None
        self.input_multiple = _pooling_multiple(self.interpreter)

    def __call__(self, batch):
        """(B, H, W, 1) float32 in [0, 1] -> (B, H, W, 1) float32 membrane probability."""
        batch = np.ascontiguousarray(batch, np.float32)
        if batch.ndim != 4 or batch.shape[-1] != 1:
            raise ValueError(f"batch must be (B, H, W, 1); received shape {batch.shape}")
        if batch.shape != self.shape:
            self.interpreter.resize_tensor_input(self.input_index, list(batch.shape))
            self.interpreter.allocate_tensors()
            self.shape = batch.shape
        self.interpreter.set_tensor(self.input_index, batch)
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self.output_index), np.float32)
