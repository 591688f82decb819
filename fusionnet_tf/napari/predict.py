""""Predict membranes": an EM image layer -> a membrane probability layer (2D models),
or a (Z, Y, X) volume -> affinities and their boundary map (3D affinity models).

The image is checked and normalized in the viewer's thread exactly as
``fusionnet predict`` does it (``check_finite``, then ``normalize`` per slice
by default); the model is loaded and run by the prediction engine
(``engine``): a worker process of its own, so TensorFlow never loads in the
viewer's process, where its LLVM would clash with that of Mesa's OpenGL
driver. A napari worker thread relays the engine's ``(done, total)`` tiles to
the progress bar. Cancel stops the run at its next tile group, and nothing is
added then. Errors (bad layer, missing model file, a tile size the model
refuses) become napari notifications. The widget remembers its last settings
(``settings``).

The model is a shipped one by name (``isbi2012``, 2D membranes, the
default; ``snemi3d``, 3D affinities) or a model file, which takes precedence.
A 3D model (5D input, e.g. ``snemi3d`` or a user's ``.keras``) predicts
(C, Z, Y, X) affinities of a (Z, Y, X) layer with tiles (``tile z``, tile,
tile), as ``fusionnet predict --model snemi3d`` does; they become the layers
"<image> affinities" (offsets in ``layer.metadata``) and "<image>
boundaries" (see ``affinities``). A single 2D image given to a 3D model is
refused in one line, in the viewer's thread when the model's kind can be read
without TensorFlow (shipped models, ``.keras`` files), else by the worker.
"""

import inspect
from pathlib import Path

import napari
from magicgui.widgets import FunctionGui, ProgressBar, PushButton
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info

from fusionnet_tf import predict_options
from fusionnet_tf.napari.engine import (PredictionCancelled, PredictionFailed, PredictionResult,
                                        acquire_engine, release_engine)
from fusionnet_tf.napari.layers import add_or_replace, layer_array, report_errors, show_error
from fusionnet_tf.napari.settings import remember_settings

TITLE = "Predict membranes"
OUTPUT_SUFFIX = " membranes"  # the output layer is "<image name> membranes"

def _pretrained_names():
    from fusionnet_tf.pretrained import REGISTRY

    return list(REGISTRY)


OPTIONS = {
    "image": {"label": "image"},
    "pretrained": {"label": "model", "choices": _pretrained_names(),
                   "tooltip": "A shipped model: isbi2012 (2D membranes) or snemi3d (3D "
                              "affinities of a (Z, Y, X) volume); a model file below replaces "
                              "it."},
    "model_path": {"label": "or model file", "mode": "r",
                   "tooltip": "A .keras file (2D or 3D), a bioimage.io package .zip or a "
                              "SavedModel folder (type its path); empty = the shipped model "
                              "chosen above.",
                   "filter": "*.keras *.zip *.h5"},
    # the prediction options: generated from PredictOptions (tile_size, overlap, tta, ...,
    # tile_z, normalization)
    **predict_options.widget_options(),
}
# the widget's parameters after the image: the model, then the PredictOptions fields the
# widget shows (named like the command-line options, defaults from the dataclass); all of
# them are remembered between sessions (settings.py)
SETTINGS = ("pretrained", "model_path",
            *(name for name, _, _ in predict_options.widget_parameters()))


def predict_signature():
    """``inspect.Signature`` of the widget, its option parameters generated from PredictOptions.

    ``viewer``, ``image``, ``pretrained``, ``model_path``, then one
    parameter per ``predict_options.widget_parameters()`` (``tile_size``,
    ``overlap``, ``tta``, ..., ``tile_z``, ``normalization``: the
    ``fusionnet predict`` option names and the ``PredictOptions`` defaults).
    """
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [
        inspect.Parameter("viewer", kind, annotation=napari.viewer.Viewer),
        inspect.Parameter("image", kind, annotation=Image),
        inspect.Parameter("pretrained", kind, annotation=str, default="isbi2012"),
        inspect.Parameter("model_path", kind, annotation=Path, default=Path("")),
    ]
    for name, annotation, default in predict_options.widget_parameters():
        parameters.append(inspect.Parameter(name, kind, annotation=annotation, default=default))
    return inspect.Signature(parameters)


def model_spec(model_path, pretrained=None):
    """The model a run uses: ``model_path`` if given, else the shipped model ``pretrained``.

    Args:
        model_path: str/Path, empty for none. A registry name typed here
            (``snemi3d``) is the shipped model of that name, as ``--model``.
        pretrained: a registry name, or None / ``"isbi2012"`` (the default).

    Returns:
        None (the shipped default model, loaded by name in the worker) or
        the ``Path`` of the model file (a shipped model's weights for other
        names).

    Raises:
        FileNotFoundError: a path that does not exist, naming it.
        ValueError: an unknown registry name.
    """
    from fusionnet_tf.pretrained import DEFAULT_MODEL, is_model_name, pretrained_path

    text = str(model_path or "").strip()
    if text in ("", "."):
        name = pretrained or DEFAULT_MODEL
        return None if name == DEFAULT_MODEL else pretrained_path(name)
    if is_model_name(text):
        return pretrained_path(text)
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    return path


def model_spatial_dims(model):
    """2 or 3 for the shipped model (None) and ``.keras`` files, read without TensorFlow.

    Returns:
        2, 3, or None when only loading the model tells (SavedModel folders,
        ``.onnx``; the worker checks those).
    """
    from fusionnet_tf.inference.backends.keras_file import keras_file_spatial_dims

    if model is None:
        return 2
    suffix = Path(model).suffix.lower()
    if suffix == ".keras":
        return keras_file_spatial_dims(model)
    return 2 if suffix in (".h5", ".zip", ".tflite") else None


def check_image_for_model(images, dims, layer):
    """Refuse a single 2D image for a 3D model and an affinity layer for any model (one line).

    Args:
        images: the prepared (H, W) or (N, H, W) float32 images.
        dims: ``model_spatial_dims`` (2, 3 or None).
        layer: the image layer (for its name).

    Raises:
        ValueError: naming the layer.
    """
    if dims == 3:
        from fusionnet_tf.inference.predictor import check_volume_for_3d_model

        check_volume_for_3d_model(images.shape, f"image layer '{layer.name}'")


def prepare_images(layer, normalization):
    """The layer's data checked and normalized as ``fusionnet predict`` does it.

    Returns:
        (H, W) or (N, H, W) float32 in [0, 1], the layer's shape.

    Raises:
        ValueError: a colour, multiscale or non-2D/3D layer, an affinity
            layer, NaN/inf values.
    """
    from fusionnet_tf.data import normalize
    from fusionnet_tf.data.normalize import check_finite
    from fusionnet_tf.napari.affinities import holds_affinities

    if layer is not None and holds_affinities(layer):
        raise ValueError(f"image layer '{layer.name}' holds affinities (shape "
                         f"{tuple(layer.data.shape)}); give the EM image (2D, or a (Z, Y, X) "
                         "volume for a 3D model)")
    raw = layer_array(layer, "image")
    check_finite(raw, f"image layer '{layer.name}'")
    return normalize(raw, mode=normalization)


class PredictWidget(FunctionGui):
    """The "Predict membranes" dock widget (a magicgui ``FunctionGui``).

    Calling it (``widget()``) starts a prediction with the current settings
    and returns its napari worker (None if the input was refused); the new
    layer "<image> membranes" (a 3D model: "<image> affinities" and
    "<image> boundaries") appears when the worker returns (replacing the
    data of an existing layer of that name). ``cancel()`` stops it. The
    model runs in the shared prediction engine's process (started on the
    first run, kept for the next, stopped when the last Predict widget closes).

    Attributes:
        worker: the running napari worker (a thread relaying the engine's
            progress), or None.
        prediction_engine: the shared ``engine.PredictionEngine``.
        progress: the progress bar (tiles done of total).
        cancel_button: the Cancel button.
    """

    def __init__(self):
        signature = predict_signature()

        def predict_membranes(*args, **kwargs):
            return self.predict_membranes(**signature.bind(*args, **kwargs).arguments)

        predict_membranes.__signature__ = signature  # magicgui builds the widgets from it
        super().__init__(predict_membranes, call_button=TITLE, param_options=OPTIONS)
        remember_settings(self, SETTINGS, "predict")
        self.worker = None
        self.prediction_engine = acquire_engine()
        self.native.destroyed.connect(release_engine)  # the dock (or the viewer) closed
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.cancel_button.changed.connect(self.cancel)
        self.extend([self.progress, self.cancel_button])

    def predict_membranes(self, viewer=None, image=None, pretrained="isbi2012",
                          model_path=Path(""), **values):
        """Check the input, then start the worker; returns it (None if refused).

        ``values`` are the option parameters (``predict_signature``).
        """
        if self.worker is not None:
            show_info(f"{TITLE}: a prediction is already running")
            return None
        with report_errors(TITLE):
            from fusionnet_tf.inference.predictor import check_precision_applies

            chosen = predict_options.from_widget(values)  # checked here, in one line
            model = model_spec(model_path, pretrained)
            check_precision_applies(chosen.precision, model)
            images = prepare_images(image, chosen.normalization)
            check_image_for_model(images, model_spatial_dims(model), image)
            return self.start(viewer or napari.current_viewer(), image, images, model,
                              chosen.to_dict())
        return None

    def start(self, viewer, image, images, model, options):
        """Run the engine in a napari worker; connect progress, result and errors."""
        described = run_metadata(model, options)
        worker = create_worker(predict_and_prepare, self.prediction_engine, model, images,
                               options, name=image.name, _connect={"errored": self._errored},
                               _start_thread=False)
        worker.yielded.connect(self._step)
        worker.returned.connect(lambda result: self._returned(viewer, image, result, described))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.progress.value = 0
        self.cancel_button.enabled = True
        self.call_button.enabled = False
        worker.start()
        return worker

    def cancel(self, *_):
        """Stop the running prediction at its next tile group (no layer is added)."""
        if self.worker is not None:
            self.prediction_engine.cancel()

    def _step(self, counts):
        done, total = counts
        self.progress.max = max(int(total), 1)
        self.progress.value = int(done)

    @classmethod
    def _returned(cls, viewer, image, result, metadata=None):
        if isinstance(result, PredictionFailed):
            show_error(f"{TITLE}: {result.message}")
        elif isinstance(result, PredictionCancelled):
            show_info(f"{TITLE}: cancelled; no layer added")
        elif isinstance(result, AffinityPrediction):
            cls._add_affinity_layers(viewer, image, result, metadata)
        else:
            cls._add_layer(viewer, image, result.data)

    @staticmethod
    def _add_layer(viewer, image, result):
        add_or_replace(viewer, image.name + OUTPUT_SUFFIX, result, "image", like=image,
                       colormap="magma", contrast_limits=(0.0, 1.0), blending="additive",
                       opacity=0.6)

    @staticmethod
    def _add_affinity_layers(viewer, image, result, metadata):
        """"<image> affinities" (offsets in its metadata) and "<image> boundaries"."""
        from fusionnet_tf.napari.affinities import affinity_metadata

        affinity_kwargs, boundary_kwargs = result.layers[0][1], result.layers[1][1]
        affs_name = affinity_kwargs.pop("name")
        affinity_kwargs["metadata"] = affinity_metadata(result.offsets, metadata)
        add_or_replace(viewer, affs_name, result.data, "image", like=image, **affinity_kwargs)
        add_or_replace(viewer, boundary_kwargs.pop("name"), result.layers[1][0], "image",
                       like=image, **boundary_kwargs)

    @staticmethod
    def _errored(exc):
        show_error(f"{TITLE}: {exc}")

    def _finished(self):
        self.worker = None
        self.cancel_button.enabled = False
        self.call_button.enabled = True


class AffinityPrediction:
    """A 3D model's result, ready for the viewer: affinities, offsets and the layer data.

    Attributes:
        data: (C, Z, Y, X) float32 affinities.
        offsets: the C ``(dz, dy, dx)`` offsets.
        layers: ``affinities.affinity_layer_data`` of the image (the boundary
            map is computed in the worker thread, not the viewer's).
    """

    def __init__(self, result, name):
        from fusionnet_tf.napari.affinities import affinity_layer_data

        self.data, self.offsets = result.data, result.offsets
        self.layers = affinity_layer_data(name, self.data, self.offsets)


def predict_and_prepare(prediction_engine, model, images, options, name=""):
    """Generator for the napari worker: the engine's run, then the affinity layers' data.

    Yields the engine's ``(done, total)`` tile counts; returns its outcome,
    an ``AffinityPrediction`` in place of a 3D model's ``PredictionResult``.
    """
    result = yield from prediction_engine.run(model, images, options)
    if isinstance(result, PredictionResult) and result.offsets is not None:
        try:
            return AffinityPrediction(result, name)
        except ValueError as exc:  # no nearest-neighbour offset: one line
            return PredictionFailed(str(exc))
    return result


def run_metadata(model, options):
    """What the affinity layer's metadata records of the run (as ``fusionnet predict``'s file).

    Args:
        options: ``PredictOptions.to_dict()`` of the run.
    """
    from fusionnet_tf.pretrained import pretrained_name_of

    name = pretrained_name_of(model) if model is not None else None
    chosen = predict_options.PredictOptions.from_dict(options)
    return {"model": name or (str(model) if model is not None else "pretrained"),
            "tile": list(chosen.tile(3)), "overlap": list(chosen.overlaps(3)),
            "tta": chosen.tta, "normalization": chosen.normalization,
            "precision": chosen.precision, "engine": chosen.engine}


def make_predict_widget():
    """npe2 widget command: a new ``PredictWidget``."""
    return PredictWidget()
