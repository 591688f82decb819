"""TensorRT export for NVIDIA inference machines (not exercised by CI).

Two routes, both written against the documented APIs:

- ``"tf-trt"``: TF-TRT ``TrtGraphConverterV2`` (FP32 or FP16) on the plain
  SavedModel; engines for (batch, tile, tile, 1) are built ahead of time and
  saved in a SavedModel folder ``<name>_tftrt_<precision>/``. Needs a
  TensorFlow build with TensorRT (the CPU wheels have none).
- ``"onnx"``: the ONNX export parsed by the TensorRT Python API
  (``tensorrt.OnnxParser``) into a serialized engine ``<name>_<precision>.plan``
  with an optimization profile for (1..batch, tile, tile, 1). Needs the
  ``tensorrt`` Python package and an NVIDIA GPU.

On machines without TensorRT both raise ``TensorRTUnavailable`` with one
sentence saying what is missing (``tensorrt_missing_reason``), before any work.
"""

import importlib.util
import tempfile
from pathlib import Path

import numpy as np

from fusionnet_tf.checks import check_choice, check_int
from fusionnet_tf.io.outputs import atomic_path

ROUTES = ("tf-trt", "onnx")
PRECISIONS = ("fp32", "fp16")


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or TF-TRT) is not available on this machine."""


def tf_trt_available():
    """True if this TensorFlow build was compiled with TensorRT support."""
    import tensorflow as tf

    if not tf.sysconfig.get_build_info().get("is_tensorrt_build", False):
        return False
    try:
        from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils
    except ImportError:
        return False
    return bool(_pywrap_py_utils.is_tensorrt_enabled())


def tensorrt_python_available():
    """True if the ``tensorrt`` Python package is importable."""
    return importlib.util.find_spec("tensorrt") is not None


def tensorrt_missing_reason(route="tf-trt"):
    """One sentence saying what is missing for ``route``, or None if it can run."""
    check_choice("route", route, ROUTES)
    if route == "tf-trt" and not tf_trt_available():
        return ("TensorRT export (route tf-trt) needs a TensorFlow build with TensorRT support "
                "and an NVIDIA GPU, but this TensorFlow was built without TensorRT "
                "(use the NVIDIA TensorFlow container, or --trt-route onnx with the "
                "'tensorrt' Python package).")
    if route == "onnx" and not tensorrt_python_available():
        return ("TensorRT export (route onnx) needs the 'tensorrt' Python package and an NVIDIA "
                "GPU, but 'tensorrt' is not installed (pip install tensorrt on a CUDA machine).")
    return None


def _check_args(route, precision, tile_size, batch_size):
    check_choice("route", route, ROUTES)
    check_choice("precision", precision, PRECISIONS, "for TensorRT")
    check_int("tile_size", tile_size, 1)
    check_int("batch_size", batch_size, 1)


def export_tensorrt(model, output_dir, name="fusionnet", route="tf-trt", precision="fp16",
                    tile_size=512, batch_size=4, card_extra=None):
    """Export ``model`` for TensorRT by ``route`` at ``precision``.

    Args:
        model: ``keras.Model`` (B, H, W, 1) float32 -> (B, H, W, 1) float32.
        output_dir: str or Path (created if missing).
        name: str. Artifact stem. Defaults to ``"fusionnet"``.
        route: ``"tf-trt"`` or ``"onnx"``. Defaults to ``"tf-trt"``.
        precision: ``"fp32"`` or ``"fp16"``. Defaults to ``"fp16"``.
        tile_size: int. Tile side the engines are built for. Defaults to 512.
        batch_size: int. Largest batch of the engines. Defaults to 4.
        card_extra: optional dict merged into the model card.

    Returns:
        Path of the artifact (SavedModel folder or ``.plan`` file).

    Raises:
        ValueError: unknown route or precision, or a 3D model (TensorRT
            exports are 2D only).
        TensorRTUnavailable: TensorRT is missing for this route.

    Example:
    >>> export_tensorrt(model, "trt", route="onnx", precision="fp16")
    """
    from fusionnet_tf.export.model_card import check_2d_model

    check_2d_model(model, "tensorrt")
    _check_args(route, precision, tile_size, batch_size)
    reason = tensorrt_missing_reason(route)
    if reason:
        raise TensorRTUnavailable(reason)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if route == "tf-trt":
        path = _export_tf_trt(model, output_dir, name, precision, tile_size, batch_size)
    else:
        path = _export_onnx_engine(model, output_dir, name, precision, tile_size, batch_size)
    _write_card(model, path, route, precision, tile_size, batch_size, card_extra)
    return path


def _write_card(model, path, route, precision, tile_size, batch_size, card_extra):
    from fusionnet_tf.export.model_card import build_model_card, card_path_for, write_model_card

    card = build_model_card(model, "tensorrt", path.name, quantization=precision,
                            tolerance="not measured by CI (no TensorRT on CI machines)",
                            extra=card_extra)
    card["tensorrt"] = {"route": route, "precision": precision, "tile_size": tile_size,
                        "max_batch_size": batch_size}
    card_path = path / "model_card.json" if path.is_dir() else card_path_for(path)
    write_model_card(card, card_path)


def _export_tf_trt(model, output_dir, name, precision, tile_size, batch_size):
    """TF-TRT: convert the plain SavedModel, prebuild engines, save."""
    from tensorflow.python.compiler.tensorrt import trt_convert as trt

    from fusionnet_tf.export.saved_model import export_plain_saved_model

    path = output_dir / f"{name}_tftrt_{precision}"
    if path.exists():
        raise FileExistsError(f"TensorRT output already exists: {path}")
    mode = trt.TrtPrecisionMode.FP16 if precision == "fp16" else trt.TrtPrecisionMode.FP32
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".saved_model-") as tmp:
        saved = export_plain_saved_model(model, Path(tmp) / "model")
        converter = trt.TrtGraphConverterV2(
            input_saved_model_dir=str(saved), input_saved_model_signature_key="serving_default",
            precision_mode=mode, use_dynamic_shape=True,
            dynamic_shape_profile_strategy="Optimal")
        converter.convert()

        def input_fn():
            for batch in sorted({1, batch_size}):
                yield (np.zeros((batch, tile_size, tile_size, 1), np.float32),)

        converter.build(input_fn=input_fn)
        converter.save(str(path))
    return path


def _export_onnx_engine(model, output_dir, name, precision, tile_size, batch_size):
    """ONNX -> TensorRT engine with the TensorRT Python API."""
    import tensorrt as trt

    from fusionnet_tf.export.onnx import export_onnx

    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".onnx-") as tmp:
        onnx_path = export_onnx(model, tmp, name)
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        major = int(trt.__version__.split(".")[0])
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    tile = (tile_size, tile_size, 1)
    profile.set_shape(network.get_input(0).name, (1,) + tile, (batch_size,) + tile,
                      (batch_size,) + tile)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT failed to build the engine; see the TensorRT log above")
    path = output_dir / f"{name}_{precision}.plan"
    with atomic_path(path) as tmp_file:
        tmp_file.write_bytes(bytes(engine))
    return path
