"""Neuron segmentation: membrane probability maps -> label images.

The stage between inference (``fusionnet_tf.inference``) and scoring
(``fusionnet_tf.metrics``): a seeded watershed on the membrane map, then
agglomeration of the over-segmentation on its region adjacency graph. See
``segment`` for the recipe and ``SegmentParams`` for its knobs, and
``edge_classifier`` for the learned alternative to the merge threshold.

Names are imported lazily, so that the CLI can read ``MODES`` and
``SegmentParams`` without importing NumPy and scikit-image.
"""

from fusionnet_tf.lazy import lazy_attributes

# public name -> module that defines it
_LAZY = {
    "MODES": "fusionnet_tf.segmentation.params",
    "SegmentParams": "fusionnet_tf.segmentation.params",
    "default_params": "fusionnet_tf.segmentation.params",
    "load_params": "fusionnet_tf.segmentation.params",
    "save_params": "fusionnet_tf.segmentation.params",
    "AffinityParams": "fusionnet_tf.segmentation.affinity_params",
    "segment_affinities": "fusionnet_tf.segmentation.affinities",
    "agglomerate": "fusionnet_tf.segmentation.agglomeration",
    "region_adjacency": "fusionnet_tf.segmentation.agglomeration",
    "EdgeClassifier": "fusionnet_tf.segmentation.edge_classifier",
    "cross_validate_edge_classifier": "fusionnet_tf.segmentation.edge_classifier",
    "load_edge_classifier": "fusionnet_tf.segmentation.edge_classifier",
    "train_edge_classifier": "fusionnet_tf.segmentation.edge_classifier",
    "check_membrane": "fusionnet_tf.segmentation.segmenter",
    "segment": "fusionnet_tf.segmentation.segmenter",
    "segment_array": "fusionnet_tf.segmentation.segmenter",
    "stack_slices": "fusionnet_tf.segmentation.segmenter",
    "relabel_consecutive": "fusionnet_tf.segmentation.watershed",
    "seeded_watershed": "fusionnet_tf.segmentation.watershed",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

__all__ = sorted(_LAZY)
