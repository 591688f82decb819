"""Inference: seamless overlap-tile prediction with test-time augmentation.

``Predictor`` predicts 2D images and (N, H, W) stacks of any size;
``load_model`` loads a ``.keras`` file, SavedModel folder, ``.onnx``,
``.tflite`` or bioimage.io package (one adapter per runtime in ``backends``)
or a shipped model by name; ``PredictOptions`` (``fusionnet_tf.predict_options``)
holds its options. The tiling geometry (``tiling.TileGrid``) is in ``tiling`` (pure
NumPy), output writers in ``writers``.
"""

from fusionnet_tf.inference.backends import load_model
from fusionnet_tf.inference.predictor import Predictor, check_precision_applies
from fusionnet_tf.predict_options import PredictOptions

__all__ = ["Predictor", "PredictOptions", "check_precision_applies", "load_model"]
