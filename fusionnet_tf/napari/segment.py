""""Segment neurons": a membrane probability layer -> a labels layer.

The parameters are those of ``fusionnet segment``: every ``SegmentParams``
field, with the tuned defaults of the shipped model (``default_params()``),
plus ``mode`` and ``keep_boundaries``. The widget's signature is built from
the dataclass, so a new parameter appears here without code changes. The
input is checked in the viewer's thread; the segmentation (NumPy/SciPy)
runs in a napari worker thread, so the viewer stays responsive. The result
goes to the labels layer "<membrane layer> neurons"; running again replaces
its data instead of adding another layer.
"""

import dataclasses
import inspect

import napari
from magicgui.widgets import FunctionGui
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info

from fusionnet_tf.napari.layers import add_or_replace, layer_array, report_errors, show_error
from fusionnet_tf.napari.settings import remember_settings

TITLE = "Segment neurons"
OUTPUT_SUFFIX = " neurons"

_UNIT_RANGE = {"min": 0.0, "max": 1.0, "step": 0.01}
_PIXELS = {"min": 0.0, "max": 1000.0, "step": 0.5}
# Widget ranges only; SegmentParams validates the values.
PARAM_OPTIONS = {
    "sigma": _PIXELS, "seed_threshold": _UNIT_RANGE, "seed_distance": _PIXELS,
    "min_seed_size": {"min": 0, "max": 10**7}, "merge_threshold": _UNIT_RANGE,
    "merge_quantile": _UNIT_RANGE, "min_size": {"min": 0, "max": 10**7},
    "anisotropy": {"min": 1.0, "max": 1000.0, "step": 0.5}, "z_link_overlap": _UNIT_RANGE,
}


def _choices():
    from fusionnet_tf.segmentation.params import MERGE_STATISTICS, MODES, SEED_METHODS

    return {"seed_method": SEED_METHODS, "merge_statistic": MERGE_STATISTICS, "mode": MODES}


def segment_signature():
    """``inspect.Signature`` of the widget: layer, mode, keep_boundaries, then the parameters."""
    from fusionnet_tf.segmentation import default_params

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [
        inspect.Parameter("viewer", kind, annotation=napari.viewer.Viewer),
        inspect.Parameter("membrane", kind, annotation=Image),
        inspect.Parameter("mode", kind, annotation=str, default="2d"),
        inspect.Parameter("keep_boundaries", kind, annotation=bool, default=False),
    ]
    defaults = default_params()
    for field in dataclasses.fields(defaults):
        parameters.append(inspect.Parameter(field.name, kind, annotation=field.type,
                                            default=getattr(defaults, field.name)))
    return inspect.Signature(parameters)


def prepare_segmentation(membrane, values):
    """Check the layer and parameters in the viewer's thread, before any work.

    Args:
        membrane: napari image layer: float in [0, 1] or uint8 0-255,
            1 = membrane; (H, W) or (N, H, W).
        values: dict of ``SegmentParams`` fields.

    Returns:
        ``(prob, params)``: the float32 membrane probability of the layer's
        shape and the ``SegmentParams``.

    Raises:
        ValueError: bad layer or parameter values, naming them.
    """
    from fusionnet_tf.inference.writers import membrane_from_array
    from fusionnet_tf.segmentation import SegmentParams

    data = layer_array(membrane, "membrane probability")
    prob = membrane_from_array(data, f"layer '{membrane.name}'", "membrane")
    return prob.reshape(data.shape), SegmentParams.from_dict(values, source=TITLE)


def run_segmentation(prob, params, mode, keep_boundaries):
    """Segment as ``fusionnet segment`` does (run by the widget's worker thread).

    Args:
        prob: (H, W) or (N, H, W) float32 membrane probability.
        params: ``SegmentParams``.
        mode: ``"2d"`` or ``"3d"``.
        keep_boundaries: bool.

    Returns:
        Integer label array of ``prob``'s shape.
    """
    from fusionnet_tf.segmentation import segment

    labels, _ = segment(prob, params, mode=mode, keep_boundaries=keep_boundaries)
    return labels.reshape(prob.shape)


def segment_layer(membrane, mode, keep_boundaries, **values):
    """Segment a membrane layer as ``fusionnet segment`` segments its file (in this thread).

    Args:
        membrane: napari image layer (see ``prepare_segmentation``).
        mode: ``"2d"`` or ``"3d"``.
        keep_boundaries: bool.
        **values: ``SegmentParams`` fields.

    Returns:
        Integer label array of the layer's shape.

    Raises:
        ValueError: bad layer or parameter values, naming them.
    """
    prob, params = prepare_segmentation(membrane, values)
    return run_segmentation(prob, params, mode, keep_boundaries)


class SegmentWidget(FunctionGui):
    """The "Segment neurons" dock widget (a magicgui ``FunctionGui``).

    Calling it (``widget()``) checks the input, then segments in a napari
    worker thread with the current settings and returns the worker (None if
    the input was refused); the labels layer "<membrane> neurons" appears
    (or gets the new data) when the worker returns. The widget remembers its
    last settings (``settings``).

    Attributes:
        worker: the running napari worker, or None.
    """

    def __init__(self):
        signature = segment_signature()

        def segment_neurons(*args, **kwargs):
            return self.segment_neurons(**signature.bind(*args, **kwargs).arguments)

        segment_neurons.__signature__ = signature  # magicgui builds the widgets from it
        options = dict(PARAM_OPTIONS, membrane={"label": "membrane probability"})
        for name, choices in _choices().items():
            options[name] = {"choices": list(choices)}
        super().__init__(segment_neurons, call_button=TITLE, param_options=options)
        self.worker = None
        remember_settings(self, list(signature.parameters)[2:], "segment")

    def segment_neurons(self, viewer=None, membrane=None, mode="2d", keep_boundaries=False,
                        **values):
        """Check the input, then segment in a worker into "<membrane> neurons"; returns it."""
        if self.worker is not None:
            show_info(f"{TITLE}: a segmentation is already running")
            return None
        with report_errors(TITLE):
            prob, params = prepare_segmentation(membrane, values)
            viewer = viewer or napari.current_viewer()
            worker = create_worker(run_segmentation, prob, params, mode, keep_boundaries,
                                   _connect={"errored": self._errored}, _start_thread=False)
            worker.returned.connect(lambda labels: self._add_layer(viewer, membrane, labels))
            worker.finished.connect(self._finished)
            self.worker = worker
            self.call_button.enabled = False
            worker.start()
            return worker
        return None

    @staticmethod
    def _add_layer(viewer, membrane, labels):
        add_or_replace(viewer, membrane.name + OUTPUT_SUFFIX, labels, "labels", like=membrane)

    @staticmethod
    def _errored(exc):
        show_error(f"{TITLE}: {exc}")

    def _finished(self):
        self.worker = None
        self.call_button.enabled = True


def make_segment_widget():
    """npe2 widget command: a new ``SegmentWidget``."""
    return SegmentWidget()
