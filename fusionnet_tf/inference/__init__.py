"""Inference: seamless overlap-tile prediction with test-time augmentation.

``Predictor`` predicts 2D images and (N, H, W) stacks of any size;
``load_model`` loads a ``.keras`` file or a SavedModel folder. The tiling
geometry is in ``tiling`` (pure NumPy), output writers in ``writers``.
"""

from fusionnet_tf.inference.predictor import Predictor, check_precision_applies, load_model

__all__ = ["Predictor", "check_precision_applies", "load_model"]
