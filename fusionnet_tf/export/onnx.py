"""ONNX export through Keras's ``model.export(format="onnx")`` (tf2onnx underneath).

Checked with onnxruntime on CPU: matches Keras within 1e-5. The graph keeps
dynamic (batch, H, W); the input is named ``image``, float32 NHWC in [0, 1].
A 3D affinity model exports the same way with a 5D input (batch, Z, Y, X, 1)
-> (batch, Z, Y, X, C) NDHWC, and its offsets go to ``NAME.offsets.json``
beside ``NAME.onnx`` (where ``Predictor`` reads them) and the model card.

Running ``.onnx`` files is the ONNX backend's job
(``fusionnet_tf.inference.backends.onnx_runner.OnnxRunner``).
"""

from pathlib import Path

from fusionnet_tf.io.outputs import atomic_path

TOLERANCE = "max abs difference <= 1e-5 (onnxruntime CPU)"


def export_onnx(model, output_dir, name="fusionnet", card_extra=None, offsets=None):
    """Export ``model`` to ``<output_dir>/<name>.onnx`` plus a model card.

    Args:
        model: ``keras.Model`` (B, H, W, 1) float32 -> (B, H, W, 1) float32.
        output_dir: str or Path (created if missing).
        name: str. File stem. Defaults to ``"fusionnet"``.
        card_extra: optional dict merged into the model card.
        offsets: 3D affinity models (5D input) only: their C (dz, dy, dx)
            offsets, written to ``<output_dir>/<name>.offsets.json`` and the
            model card (None: unknown, no sidecar).

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

    from fusionnet_tf.export.model_card import is_3d_model
    from fusionnet_tf.export.saved_model import write_offsets_sidecar
    from fusionnet_tf.inference.affinity_tta import check_offsets
    from fusionnet_tf.inference.predictor import model_offsets_path

    if offsets is not None:
        if not is_3d_model(model):
            raise ValueError("`offsets` apply to 3D affinity models (input (B, Z, Y, X, 1)); "
                             "this model takes 2D (B, H, W, 1) inputs")
        offsets = check_offsets(offsets, model.output_shape[-1])
    rank = len(model.input_shape)
    signature = [tf.TensorSpec([None] * (rank - 1) + [model.input_shape[-1]], tf.float32,
                               name="image")]
    with atomic_path(path) as tmp, contextlib.redirect_stdout(io.StringIO()):
        model.export(str(tmp), format="onnx", verbose=False, input_signature=signature)
    if offsets is not None:
        write_offsets_sidecar(model_offsets_path(path), offsets)
        card_extra = dict(card_extra or {}, offsets=[list(o) for o in offsets])
    card = build_model_card(model, "onnx", path.name, tolerance=TOLERANCE, extra=card_extra)
    card["runtime"] = "onnxruntime (CPUExecutionProvider) or TensorRT"
    write_model_card(card, card_path_for(path))
    return path
