"""EM data: readers, label conventions, normalization and ``tf.data`` pipelines.

NumPy-only parts (readers, labels, normalization, ISBI paths) import eagerly;
the TensorFlow parts (``AugmentConfig``, ``train_dataset``,
``validation_dataset``, ``isbi2012_datasets``) load on first use.
"""

from fusionnet_tf.lazy import lazy_attributes

from fusionnet_tf.data.isbi2012 import get_isbi2012_paths, isbi2012_datasets, load_isbi2012
from fusionnet_tf.data.labels import read_labels, to_membrane
from fusionnet_tf.data.normalize import intensity_range, normalize
from fusionnet_tf.data.readers import LazyStack, open_stack, read_stack

_LAZY = {
    "AugmentConfig": "fusionnet_tf.data.augment",
    "train_dataset": "fusionnet_tf.data.pipeline",
    "validation_dataset": "fusionnet_tf.data.pipeline",
    "validation_tile_origins": "fusionnet_tf.data.pipeline",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


__all__ = sorted([
    "get_isbi2012_paths", "isbi2012_datasets", "load_isbi2012", "read_labels", "to_membrane",
    "intensity_range", "normalize", "LazyStack", "open_stack", "read_stack",
] + list(_LAZY))
