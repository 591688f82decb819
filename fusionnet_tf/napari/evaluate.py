""""Evaluate": score a probability or labels layer against a ground-truth layer.

The numbers are ``fusionnet evaluate``'s, from the same library calls: a
probability (image) layer gets the ISBI 2012 scores (``isbi_scores``: V_rand,
V_info and pixel error, best over thresholds 0.0..1.0), a labels layer the
segmentation scores (``segmentation_scores_report``: V_rand, V_info, adapted
Rand error, VOI split/merge, CREMI score). The ground truth is binary
(``isbi``: 0 = membrane, as in ISBI 2012's train-labels.tif; ``membrane``:
nonzero = membrane), converted by ``read_labels`` as on the command line.
"""

import napari
import numpy as np
from magicgui.widgets import FunctionGui, Table
from napari.layers import Image, Labels, Layer

from fusionnet_tf.choices import LABEL_CONVENTIONS
from fusionnet_tf.napari.layers import as_stack, layer_array, report_errors
from fusionnet_tf.napari.settings import remember_settings

TITLE = "Evaluate"
COLUMNS = ("metric", "score", "threshold")
ISBI_ROWS = (("V_rand", "v_rand"), ("V_info", "v_info"), ("pixel error", "pixel_error"))


def ground_truth_membrane(layer, convention):
    """(N, H, W) uint8 membrane target (1 = membrane) of a binary ground-truth layer."""
    from fusionnet_tf.data import read_labels

    return read_labels(as_stack(layer_array(layer, "ground-truth")), convention)


def score_layer(layer, ground_truth, convention="isbi"):
    """``fusionnet evaluate``'s scores of ``layer`` against ``ground_truth``.

    Args:
        layer: napari ``Labels`` layer (integer ids: segmentation scores) or
            ``Image`` layer (membrane probability, float in [0, 1] or uint8
            0-255: ISBI scores).
        ground_truth: binary napari layer of the same shape.
        convention: ``"isbi"`` or ``"membrane"`` for ``ground_truth``.

    Returns:
        ``(kind, scores)``: ``"isbi"`` or ``"segmentation"`` and the scores dict.

    Raises:
        ValueError: other layer types, non-binary ground truth, shapes that
            differ, naming the layers.
    """
    from fusionnet_tf.metrics import isbi_scores, segmentation_scores_report

    if not isinstance(layer, (Image, Labels)):
        raise ValueError(f"layer '{getattr(layer, 'name', layer)}' is not an image (membrane "
                         "probability) or labels (segments) layer")
    labels = ground_truth_membrane(ground_truth, convention)
    data = as_stack(layer_array(layer, "scored"))
    if data.shape != labels.shape:
        raise ValueError(f"layer '{layer.name}' has shape {data.shape} but ground truth "
                         f"'{ground_truth.name}' has {labels.shape}")
    if isinstance(layer, Labels):
        if data.dtype == bool or not np.issubdtype(data.dtype, np.integer):
            raise ValueError(f"labels layer '{layer.name}' must have integer ids; received "
                             f"dtype {data.dtype}")
        return "segmentation", segmentation_scores_report(labels, data)
    from fusionnet_tf.inference.writers import membrane_from_array

    membrane = membrane_from_array(data, f"layer '{layer.name}'", "membrane")
    return "isbi", isbi_scores(membrane, labels)


def score_rows(kind, scores):
    """Table rows ``(metric, score, threshold)`` as text, as ``fusionnet evaluate`` prints them."""
    if kind == "isbi":
        return [(title, f"{scores[key]:.4f}", f"{scores[key + '_threshold']:.1f}")
                for title, key in ISBI_ROWS]
    from fusionnet_tf.cli.evaluate import SEGMENTATION_ROWS

    return [(title, f"{scores[key]:.4f}", "") for title, key in SEGMENTATION_ROWS]


class EvaluateWidget(FunctionGui):
    """The "Evaluate" dock widget (a magicgui ``FunctionGui``) with a score table.

    Calling it (``widget()``) scores the chosen layer and fills ``table``;
    returns the scores dict (None if the input was refused). The ground-truth
    convention is remembered (``settings``).

    Attributes:
        table: magicgui ``Table`` with columns metric, score, threshold.
        scores: the last scores dict (as ``fusionnet evaluate --json``), or None.
    """

    def __init__(self):
        options = {"layer": {"label": "probability or labels"},
                   "ground_truth": {"label": "ground truth"},
                   "label_convention": {"choices": list(LABEL_CONVENTIONS),
                                        "tooltip": "isbi: 0 = membrane; membrane: nonzero = "
                                                   "membrane"}}
        super().__init__(self.evaluate, call_button=TITLE, param_options=options)
        remember_settings(self, ["label_convention"], "evaluate")
        self.scores = None
        self.table = Table(value={"data": [], "columns": list(COLUMNS)})
        self.append(self.table)

    def evaluate(self, viewer: napari.viewer.Viewer, layer: Layer, ground_truth: Layer,
                 label_convention: str = "isbi"):
        """Score ``layer`` against ``ground_truth`` into the table; returns the scores."""
        with report_errors(TITLE):
            if layer is None or ground_truth is None:
                raise ValueError("choose the scored layer and the ground-truth layer")
            kind, scores = score_layer(layer, ground_truth, label_convention)
            self.scores = dict(scores, slices=int(as_stack(np.asarray(layer.data)).shape[0]))
            rows = score_rows(kind, scores)
            self.table.value = {"data": rows, "index": list(range(len(rows))),
                                "columns": list(COLUMNS)}
            return self.scores
        return None


def make_evaluate_widget():
    """npe2 widget command: a new ``EvaluateWidget``."""
    return EvaluateWidget()
