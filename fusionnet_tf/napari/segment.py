""""Segment neurons": a membrane probability or affinity layer -> a labels layer.

The parameters are those of ``fusionnet segment``: every ``SegmentParams``
field, with the tuned defaults of the shipped model (``default_params()``),
plus ``mode`` and ``keep_boundaries``. The widget's signature is built from
the dataclass, so a new parameter appears here without code changes. The
input is checked in the viewer's thread; the segmentation (NumPy/SciPy)
runs in a napari worker thread, so the viewer stays responsive. The result
goes to the labels layer "<membrane layer> neurons"; running again replaces
its data instead of adding another layer.

An affinity layer ((C, Z, Y, X), offsets in ``layer.metadata``: Predict's
"<image> affinities" or an affinity file opened by the plugin's readers) is
segmented into 3D neurons as ``fusionnet segment AFF`` does
(``segment_affinities``), with the ``AffinityParams`` fields shown as
``affinity_*`` parameters (``affinity_method``: agglomeration or mws), whose
defaults are the parameters shipped with the snemi3d model. The widget shows
the parameters of the chosen layer's kind and hides the others.
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


AFFINITY_PREFIX = "affinity_"
AFFINITY_PARAM_OPTIONS = {
    "anisotropy": PARAM_OPTIONS["anisotropy"], "sigma": _PIXELS,
    "seed_threshold": {"min": 0.01, "max": 0.99, "step": 0.01}, "seed_distance": _PIXELS,
    "merge_threshold": _UNIT_RANGE, "merge_quantile": _UNIT_RANGE,
    "min_size": {"min": 0, "max": 10**7}, "mws_bias": _UNIT_RANGE,
    "mws_long_range_bias": _UNIT_RANGE, "mws_stride": {"min": 1, "max": 64},
}
MEMBRANE_ONLY = ("mode", "keep_boundaries")  # besides the SegmentParams fields


def _choices():
    from fusionnet_tf.segmentation import affinity_params
    from fusionnet_tf.segmentation.params import MERGE_STATISTICS, MODES, SEED_METHODS

    affinity = {"method": affinity_params.METHODS, "fragments": affinity_params.FRAGMENTS,
                "boundary": affinity_params.BOUNDARY_STATISTICS,
                "seed_method": affinity_params.AFFINITY_SEED_METHODS,
                "merge_statistic": affinity_params.MERGE_STATISTICS}
    choices = {"seed_method": SEED_METHODS, "merge_statistic": MERGE_STATISTICS, "mode": MODES}
    choices.update({AFFINITY_PREFIX + name: values for name, values in affinity.items()})
    return choices


def default_affinity_params():
    """The ``AffinityParams`` shipped with the snemi3d model (``AffinityParams()`` without)."""
    from fusionnet_tf.cli.affinity_segment import shipped_params
    from fusionnet_tf.segmentation.affinity_params import AffinityParams

    return shipped_params("snemi3d") or AffinityParams()


def split_values(values):
    """Widget values -> ``(SegmentParams fields, AffinityParams fields)`` (prefix removed)."""
    membrane = {k: v for k, v in values.items() if not k.startswith(AFFINITY_PREFIX)}
    affinity = {k[len(AFFINITY_PREFIX):]: v for k, v in values.items()
                if k.startswith(AFFINITY_PREFIX)}
    return membrane, affinity


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
    for prefix, defaults in (("", default_params()), (AFFINITY_PREFIX, default_affinity_params())):
        for field in dataclasses.fields(defaults):
            parameters.append(inspect.Parameter(prefix + field.name, kind, annotation=field.type,
                                                default=getattr(defaults, field.name)))
    return inspect.Signature(parameters)


def membrane_parameter_names():
    """The widget's parameters that apply to membrane maps only."""
    from fusionnet_tf.segmentation import SegmentParams

    return MEMBRANE_ONLY + tuple(field.name for field in dataclasses.fields(SegmentParams))


def affinity_parameter_names():
    """The widget's parameters that apply to affinity layers only (``affinity_*``)."""
    from fusionnet_tf.segmentation.affinity_params import AffinityParams

    return tuple(AFFINITY_PREFIX + field.name for field in dataclasses.fields(AffinityParams))


def prepare_segmentation(membrane, values):
    """Check the layer and parameters in the viewer's thread, before any work.

    Args:
        membrane: napari image layer: a membrane probability (float in
            [0, 1] or uint8 0-255, 1 = membrane; (H, W) or (N, H, W)) or
            affinities ((C, Z, Y, X) float in [0, 1], offsets in its metadata).
        values: dict of ``SegmentParams`` fields and ``affinity_*``
            ``AffinityParams`` fields (either set may be missing; missing
            fields take their defaults).

    Returns:
        ``(prob, params)``: the float32 membrane probability of the layer's
        shape and the ``SegmentParams``; for an affinity layer
        ``((affs, offsets), params)`` with the ``AffinityParams``.

    Raises:
        ValueError: bad layer or parameter values, naming them.
    """
    from fusionnet_tf.inference.writers import membrane_from_array
    from fusionnet_tf.napari.affinities import holds_affinities, layer_affinities
    from fusionnet_tf.segmentation import SegmentParams

    membrane_values, affinity_values = split_values(values)
    if membrane is not None and holds_affinities(membrane):
        from fusionnet_tf.segmentation.affinity_params import AffinityParams

        values = dict(default_affinity_params().to_dict(), **affinity_values)
        params = AffinityParams.from_dict(values, source=TITLE)
        return layer_affinities(membrane), params
    data = layer_array(membrane, "membrane probability")
    prob = membrane_from_array(data, f"layer '{membrane.name}'", "membrane")
    return prob.reshape(data.shape), SegmentParams.from_dict(membrane_values, source=TITLE)


def run_segmentation(prob, params, mode, keep_boundaries):
    """Segment as ``fusionnet segment`` does (run by the widget's worker thread).

    Args:
        prob: (H, W) or (N, H, W) float32 membrane probability, or
            ``(affs, offsets)`` of an affinity layer.
        params: ``SegmentParams`` (``AffinityParams`` for affinities).
        mode: ``"2d"`` or ``"3d"`` (membrane maps only).
        keep_boundaries: bool (membrane maps only).

    Returns:
        Integer label array of ``prob``'s shape; (Z, Y, X) 3D neuron ids
        (``segment_affinities``) for affinities.
    """
    from fusionnet_tf.segmentation import segment

    if isinstance(prob, tuple):
        from fusionnet_tf.segmentation.affinities import segment_affinities

        affs, offsets = prob
        labels, _ = segment_affinities(affs, offsets, params)
        return labels
    labels, _ = segment(prob, params, mode=mode, keep_boundaries=keep_boundaries)
    return labels.reshape(prob.shape)


def segment_layer(membrane, mode="2d", keep_boundaries=False, **values):
    """Segment a layer as ``fusionnet segment`` segments its file (in this thread).

    Args:
        membrane: napari image layer (see ``prepare_segmentation``).
        mode: ``"2d"`` or ``"3d"``.
        keep_boundaries: bool.
        **values: ``SegmentParams`` fields and ``affinity_*`` fields.

    Returns:
        Integer label array of the layer's shape ((Z, Y, X) for affinities).

    Raises:
        ValueError: bad layer or parameter values, naming them.
    """
    prob, params = prepare_segmentation(membrane, values)
    return run_segmentation(prob, params, mode, keep_boundaries)


def output_name(layer):
    """"<layer> neurons"; "<image> neurons" for Predict's "<image> affinities"."""
    from fusionnet_tf.napari.affinities import AFFINITY_SUFFIX

    name = layer.name
    if name.endswith(AFFINITY_SUFFIX):
        name = name[:-len(AFFINITY_SUFFIX)]
    return name + OUTPUT_SUFFIX


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
        options = dict(PARAM_OPTIONS, membrane={
            "label": "prediction", "tooltip": "A membrane probability layer, or an affinity "
                                              "layer (3D neurons)"})
        for name in affinity_parameter_names():
            field = name[len(AFFINITY_PREFIX):]
            options[name] = dict(AFFINITY_PARAM_OPTIONS.get(field, {}), label=field)
        for name, choices in _choices().items():
            options[name] = dict(options.get(name, {}), choices=list(choices))
        super().__init__(segment_neurons, call_button=TITLE, param_options=options)
        self.worker = None
        remember_settings(self, list(signature.parameters)[2:], "segment")
        self.membrane.changed.connect(self.show_parameters_for)
        self.show_parameters_for(self.membrane.value)

    def show_parameters_for(self, layer):
        """Show the parameters of ``layer``'s kind (affinities or membranes), hide the others."""
        from fusionnet_tf.napari.affinities import holds_affinities

        affinities = layer is not None and holds_affinities(layer)
        for name in membrane_parameter_names():
            getattr(self, name).visible = not affinities
        for name in affinity_parameter_names():
            getattr(self, name).visible = affinities

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
        add_or_replace(viewer, output_name(membrane), labels, "labels", like=membrane)

    @staticmethod
    def _errored(exc):
        show_error(f"{TITLE}: {exc}")

    def _finished(self):
        self.worker = None
        self.call_button.enabled = True


def make_segment_widget():
    """npe2 widget command: a new ``SegmentWidget``."""
    return SegmentWidget()
