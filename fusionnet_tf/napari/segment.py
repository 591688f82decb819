""""Segment neurons": a membrane probability layer -> a labels layer.

The parameters are those of ``fusionnet segment``: every ``SegmentParams``
field, with the tuned defaults of the shipped model (``default_params()``),
plus ``mode`` and ``keep_boundaries``. The widget's signature is built from
the dataclass, so a new parameter appears here without code changes. The
result goes to the labels layer "<membrane layer> neurons"; running again
replaces its data instead of adding another layer.
"""

import dataclasses
import inspect

import napari
from magicgui.widgets import FunctionGui
from napari.layers import Image

from fusionnet_tf.napari.layers import add_or_replace, layer_array, report_errors

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


def segment_layer(membrane, mode, keep_boundaries, **values):
    """Segment a membrane layer as ``fusionnet segment`` segments its file.

    Args:
        membrane: napari image layer: float in [0, 1] or uint8 0-255,
            1 = membrane; (H, W) or (N, H, W).
        mode: ``"2d"`` or ``"3d"``.
        keep_boundaries: bool.
        **values: ``SegmentParams`` fields.

    Returns:
        Integer label array of the layer's shape.

    Raises:
        ValueError: bad layer or parameter values, naming them.
    """
    from fusionnet_tf.inference.writers import membrane_from_array
    from fusionnet_tf.segmentation import SegmentParams, segment

    data = layer_array(membrane, "membrane probability")
    prob = membrane_from_array(data, f"layer '{membrane.name}'", "membrane")
    params = SegmentParams.from_dict(values, source=TITLE)
    labels, _ = segment(prob, params, mode=mode, keep_boundaries=keep_boundaries)
    return labels.reshape(data.shape)


class SegmentWidget(FunctionGui):
    """The "Segment neurons" dock widget (a magicgui ``FunctionGui``).

    Calling it (``widget()``) segments with the current settings and returns
    the labels layer (None if the input was refused).
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

    def segment_neurons(self, viewer=None, membrane=None, mode="2d", keep_boundaries=False,
                        **values):
        """Segment ``membrane`` into the layer "<membrane> neurons"; returns it."""
        with report_errors(TITLE):
            labels = segment_layer(membrane, mode, keep_boundaries, **values)
            viewer = viewer or napari.current_viewer()
            return add_or_replace(viewer, membrane.name + OUTPUT_SUFFIX, labels, "labels",
                                  like=membrane)
        return None


def make_segment_widget():
    """npe2 widget command: a new ``SegmentWidget``."""
    return SegmentWidget()
