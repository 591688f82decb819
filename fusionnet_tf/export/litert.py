"""LiteRT (TFLite) conversion.

``convert_tflite`` starts from a SavedModel folder (the plain
``serving_default`` graph without preprocessing, so quantization sees only
the network) and takes a ``quant_type``:

- ``"none"``: float32. Matches Keras within 1e-5.
- ``"fp16"``: float16 weights, float32 compute on CPU. Within 1e-2.
- ``"dynamic-int8"``: int8 weights, activations quantized on the fly.
- ``"int8"``: full-integer int8 weights and activations, calibrated on a
  representative dataset of EM tiles; input and output stay float32 (a
  quantize/dequantize op at each end) so clients feed the same tensors.

The int8 modes are checked by the membrane Dice of the thresholded (0.5)
output against the float model (>= 0.95 on a structured input); their
per-pixel deviation is not bounded tightly (typically a few 1e-2).

The converted model keeps dynamic (batch, H, W). Running ``.tflite`` files is
the LiteRT backend's job (``fusionnet_tf.inference.backends.litert_runner``).
"""

import tempfile
from pathlib import Path

import numpy as np

from fusionnet_tf.checks import check_choice
from fusionnet_tf.io.outputs import atomic_path

QUANT_TYPES = ("none", "fp16", "dynamic-int8", "int8")
TOLERANCES = {
    "none": "max abs difference <= 1e-5",
    "fp16": "max abs difference <= 1e-2",
    "dynamic-int8": "membrane Dice (threshold 0.5) vs float model >= 0.95",
    "int8": "membrane Dice (threshold 0.5) vs float model >= 0.95",
}


def check_quant_type(quant_type):
    """Return ``quant_type`` if known, else raise ValueError."""
    return check_choice("quant_type", quant_type, QUANT_TYPES)


def _representative_generator(representative_data):
    tiles = np.asarray(representative_data, np.float32)
    if tiles.ndim == 2:
        tiles = tiles[None]
    if tiles.ndim == 4 and tiles.shape[-1] == 1:
        tiles = tiles[..., 0]
    if tiles.ndim != 3 or len(tiles) == 0:
        raise ValueError("`representative_data` must be a non-empty (N, T, T) float32 array of "
                         f"normalized tiles; received shape {tiles.shape}")

    def generate():
        for tile in tiles:
            yield [tile[None, :, :, None]]

    return generate


def convert_tflite(saved_model_dir, quant_type="none", representative_data=None):
    """Convert a SavedModel's ``serving_default`` to a LiteRT flatbuffer.

    Args:
        saved_model_dir: str or Path of a SavedModel whose ``serving_default``
            maps (B, H, W, 1) float32 to (B, H, W, 1) float32.
        quant_type: one of ``QUANT_TYPES``. Defaults to ``"none"``.
        representative_data: (N, T, T) float32 tiles in [0, 1]; required for
            ``"int8"`` (a few dozen EM tiles), ignored otherwise.

    Returns:
        bytes of the ``.tflite`` model.

    Raises:
        ValueError: unknown ``quant_type`` or missing/bad representative data.
        FileNotFoundError: if ``saved_model_dir`` does not exist.

    Example:
    >>> data = convert_tflite("export/sm", "int8", representative_tiles(images, 256))
    """
    import tensorflow as tf

    check_quant_type(quant_type)
    if not Path(saved_model_dir).is_dir():
        raise FileNotFoundError(f"SavedModel folder not found: {saved_model_dir}")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir),
                                                         signature_keys=["serving_default"])
    if quant_type == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quant_type == "dynamic-int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quant_type == "int8":
        if representative_data is None:
            raise ValueError("`quant_type='int8'` needs representative_data: normalized EM tiles "
                             "(pass --calibration-data on the command line)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative_generator(representative_data)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def litert_file_name(name, quant_type):
    """``<name>.tflite`` for float32, ``<name>_<quant>.tflite`` otherwise."""
    suffix = "" if quant_type == "none" else "_" + quant_type.replace("-", "_")
    return f"{name}{suffix}.tflite"


def export_litert(model, output_dir, name="fusionnet", quant_type="none",
                  representative_data=None, card_extra=None):
    """Export ``model`` to ``<output_dir>/<name>[_<quant>].tflite`` plus a model card.

    Args:
        model: ``keras.Model`` (B, H, W, 1) float32 -> (B, H, W, 1) float32.
        output_dir: str or Path (created if missing).
        name: str. File stem. Defaults to ``"fusionnet"``.
        quant_type, representative_data: see ``convert_tflite``.
        card_extra: optional dict merged into the model card.

    Returns:
        Path of the ``.tflite`` file.

    Raises:
        ValueError: a 3D model (5D input); LiteRT exports are 2D only.
    """
    from fusionnet_tf.export.model_card import build_model_card, card_path_for, write_model_card
    from fusionnet_tf.export.model_card import check_2d_model
    from fusionnet_tf.export.saved_model import export_plain_saved_model

    check_2d_model(model, "litert")
    check_quant_type(quant_type)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".saved_model-") as tmp:
        saved = export_plain_saved_model(model, Path(tmp) / "model")
        flatbuffer = convert_tflite(saved, quant_type, representative_data)
    path = output_dir / litert_file_name(name, quant_type)
    with atomic_path(path) as tmp_file:
        tmp_file.write_bytes(flatbuffer)
    card = build_model_card(model, "litert", path.name, quantization=quant_type,
                            tolerance=TOLERANCES[quant_type], extra=card_extra)
    card["runtime"] = "ai_edge_litert.interpreter.Interpreter (or tf.lite.Interpreter)"
    write_model_card(card, card_path_for(path))
    return path
