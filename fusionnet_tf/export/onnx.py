"""ONNX export through Keras's ``model.export(format="onnx")`` (tf2onnx underneath).

Checked with onnxruntime on CPU: matches Keras within 1e-5. The graph keeps
dynamic (batch, H, W); the input is named ``image``, float32 NHWC in [0, 1].
"""

from pathlib import Path

import numpy as np

from fusionnet_tf.io_utils import atomic_path

TOLERANCE = "max abs difference <= 1e-5 (onnxruntime CPU)"


def export_onnx(model, output_dir, name="fusionnet", card_extra=None):
    """Export ``model`` to ``<output_dir>/<name>.onnx`` plus a model card.

    Args:
        model: ``keras.Model`` (B, H, W, 1) float32 -> (B, H, W, 1) float32.
        output_dir: str or Path (created if missing).
        name: str. File stem. Defaults to ``"fusionnet"``.
        card_extra: optional dict merged into the model card.

    Returns:
        Path of the ``.onnx`` file.

    Raises:
        ImportError: if tf2onnx/onnx are not installed (``pip install
            fusionnet-tf[export]``).

    Example:
    >>> export_onnx(model, "onnx_out")
    PosixPath('onnx_out/fusionnet.onnx')
    """
    import contextlib
    import io

    from fusionnet_tf.export.model_card import build_model_card, card_path_for, write_model_card

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{name}.onnx"
    # An explicit signature: a model fresh from a .keras file counts as "never called".
    import tensorflow as tf

    signature = [tf.TensorSpec([None, None, None, model.input_shape[-1]], tf.float32,
                               name="image")]
    with atomic_path(path) as tmp, contextlib.redirect_stdout(io.StringIO()):
        model.export(str(tmp), format="onnx", verbose=False, input_signature=signature)
    card = build_model_card(model, "onnx", path.name, tolerance=TOLERANCE, extra=card_extra)
    card["runtime"] = "onnxruntime (CPUExecutionProvider) or TensorRT"
    write_model_card(card, card_path_for(path))
    return path


def onnx_input_multiple(path):
    """Product of the ``MaxPool``/``AveragePool`` strides of an ``.onnx`` graph (1 if none).

    H and W must be multiples of it, and tiles aligned to it see the pooling
    grid of the whole image (``fusionnet_tf.models.input_multiple`` of the
    Keras model). None if the ``onnx`` package is missing.
    """
    try:
        import onnx
    except ImportError:
        return None
    multiple = 1
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type in ("MaxPool", "AveragePool"):
            strides = [list(attr.ints) for attr in node.attribute if attr.name == "strides"]
            multiple *= strides[0][0] if strides and strides[0] else 1
    return multiple


class OnnxRunner:
    """Run an ``.onnx`` membrane model with onnxruntime on float32 batches.

    ``input_multiple`` (int or None): see ``onnx_input_multiple``.

    Args:
        path: str or Path of the ``.onnx`` file.
        providers: onnxruntime execution providers. Defaults to CPU.

    Example:
    >>> probability = OnnxRunner("fusionnet.onnx")(np.zeros((1, 512, 512, 1), "float32"))
    """

    def __init__(self, path, providers=("CPUExecutionProvider",)):
        import onnxruntime

        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        self.session = onnxruntime.InferenceSession(str(path), providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name
        self.input_multiple = onnx_input_multiple(path)

    def __call__(self, batch):
        """(B, H, W, 1) float32 -> (B, H, W, 1) float32 membrane probability."""
        batch = np.ascontiguousarray(batch, np.float32)
        return self.session.run(None, {self.input_name: batch})[0]
