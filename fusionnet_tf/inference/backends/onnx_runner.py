"""ONNX runtime: ``.onnx`` files (from ``fusionnet export --format onnx``) run by onnxruntime."""

from pathlib import Path

import numpy as np

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def load(path, providers=DEFAULT_PROVIDERS):
    """An ``OnnxRunner`` of the ``.onnx`` file ``path``."""
    return OnnxRunner(path, providers=providers)


def onnx_input_multiple(path):
    """Product of the ``MaxPool``/``AveragePool`` strides of an ``.onnx`` graph (1 if none).

    H and W must be multiples of it, and tiles aligned to it see the pooling
    grid of the whole image (``fusionnet_tf.models.input_multiple`` of the
    Keras model). A 3D graph (3D pooling) gives the (z, y, x) multiples as a
    tuple. None if the ``onnx`` package is missing.
    """
    try:
        import onnx
    except ImportError:
        return None
    multiples = None
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type in ("MaxPool", "AveragePool"):
            strides = next((list(attr.ints) for attr in node.attribute if attr.name == "strides"),
                           None) or [1]
            multiples = [m * int(s) for m, s in zip(multiples or [1] * len(strides), strides)]
    if multiples is None:
        return 1
    return tuple(multiples) if len(multiples) == 3 else multiples[0]


class OnnxRunner:
    """Run an ``.onnx`` membrane (or 3D affinity) model with onnxruntime on float32 batches.

    ``input_multiple`` (int, (z, y, x) for 3D, or None): see
    ``onnx_input_multiple``; ``spatial_dims``: 2, or 3 for a 5D input.

    Args:
        path: str or Path of the ``.onnx`` file.
        providers: onnxruntime execution providers. Defaults to CPU.

    Raises:
        FileNotFoundError: ``path`` is not a file.

    Example:
    >>> probability = OnnxRunner("fusionnet.onnx")(np.zeros((1, 512, 512, 1), "float32"))
    """

    def __init__(self, path, providers=DEFAULT_PROVIDERS):
        import onnxruntime

        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        self.session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name
        self.input_multiple = onnx_input_multiple(path)
        # 3 for a 5D (B, Z, Y, X, 1) input: the Predictor then tiles volumes
        self.spatial_dims = len(self.session.get_inputs()[0].shape) - 2

    def __call__(self, batch):
        """(B, H, W, 1) float32 -> (B, H, W, 1) float32 membrane probability.

        A 3D model: (B, Z, Y, X, 1) float32 -> (B, Z, Y, X, C) float32 affinities.
        """
        batch = np.ascontiguousarray(batch, np.float32)
        return self.session.run(None, {self.input_name: batch})[0]
