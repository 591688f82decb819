"""fusionnet-tf: FusionNet for EM membrane segmentation in TensorFlow/Keras 3.

Quan, Hildebrand & Jeong (2016), https://arxiv.org/abs/1612.05360

Heavy submodules are imported lazily, so ``import fusionnet_tf`` stays cheap
and ``fusionnet --help`` answers quickly.
"""

from fusionnet_tf.backend import use_tensorflow_backend
from fusionnet_tf.lazy import lazy_attributes

use_tensorflow_backend()  # before anything imports Keras (see fusionnet_tf.backend)

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "build_fusionnet": "fusionnet_tf.models",
    "build_unet": "fusionnet_tf.models",
    "build_fcn": "fusionnet_tf.models",
    "build_model": "fusionnet_tf.models",
    "model_depth": "fusionnet_tf.models",
    "Predictor": "fusionnet_tf.inference",
    "PredictOptions": "fusionnet_tf.predict_options",
    "load_model": "fusionnet_tf.inference",
    "load_pretrained": "fusionnet_tf.pretrained",
    "predict_volume": "fusionnet_tf.volumes",
    "segment": "fusionnet_tf.segmentation",
    "SegmentParams": "fusionnet_tf.segmentation",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


__all__ = sorted(_LAZY) + ["__version__"]
