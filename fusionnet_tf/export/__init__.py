"""Export trained models to serving runtimes, and serve them over REST.

Formats (one module each): SavedModel in TF Serving's base layout
(``saved_model``, with the in-graph whole-image signature from
``whole_image``), LiteRT/TFLite (``litert``), ONNX (``onnx``) and TensorRT
(``tensorrt``), and BioImage Model Zoo packages (``bioimageio``). Every
export writes a JSON model card (``model_card``).
Loading and running the exported files (``OnnxRunner``, ``LiteRTRunner``,
``load_package_model``) is ``fusionnet_tf.inference.backends``'s job; the
names stay importable here.
``server`` is a local TF-Serving-compatible REST server and ``rest_client`` a
client for any TF Serving REST endpoint.

Heavy modules import lazily, so ``from fusionnet_tf.export import
ServingClient`` does not load TensorFlow.
"""

from fusionnet_tf.lazy import lazy_attributes

_LAZY = {
    "FusionNetExportModule": "fusionnet_tf.export.saved_model",
    "export_saved_model": "fusionnet_tf.export.saved_model",
    "next_version": "fusionnet_tf.export.saved_model",
    "list_versions": "fusionnet_tf.export.saved_model",
    "convert_tflite": "fusionnet_tf.export.litert",
    "export_litert": "fusionnet_tf.export.litert",
    # runners and the package loader live in the inference backends (kept importable here)
    "LiteRTRunner": "fusionnet_tf.inference.backends.litert_runner",
    "export_onnx": "fusionnet_tf.export.onnx",
    "OnnxRunner": "fusionnet_tf.inference.backends.onnx_runner",
    "export_bioimageio": "fusionnet_tf.export.bioimageio",
    "load_package_model": "fusionnet_tf.inference.backends.bioimageio_zip",
    "export_tensorrt": "fusionnet_tf.export.tensorrt",
    "tensorrt_missing_reason": "fusionnet_tf.export.tensorrt",
    "build_model_card": "fusionnet_tf.export.model_card",
    "write_model_card": "fusionnet_tf.export.model_card",
    "ModelServer": "fusionnet_tf.export.server",
    "ServingClient": "fusionnet_tf.export.rest_client",
    "ServingError": "fusionnet_tf.export.rest_client",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


__all__ = sorted(_LAZY)
