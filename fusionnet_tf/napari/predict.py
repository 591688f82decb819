""""Predict membranes": an EM image layer -> a membrane probability layer.

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
"""

from pathlib import Path

import napari
from magicgui.widgets import FunctionGui, ProgressBar, PushButton
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info

from fusionnet_tf.choices import ENGINES, NORMALIZATION_MODES, PRECISIONS, TTA_VALUES
from fusionnet_tf.napari.engine import (PredictionCancelled, PredictionFailed, acquire_engine,
                                        release_engine)
from fusionnet_tf.napari.layers import add_or_replace, layer_array, report_errors, show_error
from fusionnet_tf.napari.settings import remember_settings

TITLE = "Predict membranes"
OUTPUT_SUFFIX = " membranes"  # the output layer is "<image name> membranes"

# Defaults are those of `fusionnet predict` (cli/predict.py add_tiling_arguments).
OPTIONS = {
    "image": {"label": "image"},
    "model_path": {"label": "model", "mode": "r",
                   "tooltip": "A .keras file, a bioimage.io package .zip or a SavedModel folder "
                              "(type its path); empty = the shipped ISBI 2012 FusionNet.",
                   "filter": "*.keras *.zip *.h5"},
    "tile_size": {"label": "tile size", "min": 16, "max": 4096, "step": 16},
    "overlap": {"min": 0, "max": 2048, "step": 8},
    "tta": {"label": "TTA", "choices": list(TTA_VALUES),
            "tooltip": "Test-time augmentation: 1 none, 4 mirrorings, 8 all rotations/flips."},
    "precision": {"choices": list(PRECISIONS)},
    "engine": {"choices": list(ENGINES),
               "tooltip": "auto: on long jobs, times plain, frozen and XLA and keeps the "
                          "fastest (the choice is cached); plain: TensorFlow's oneDNN kernels; "
                          "frozen: the same with the weights as constants (faster calls for "
                          "wide models, slower start); xla: compiled with XLA."},
    "normalization": {"choices": list(NORMALIZATION_MODES)},
}
# the parameters the widget remembers between sessions (settings.py)
SETTINGS = ("model_path", "tile_size", "overlap", "tta", "precision", "engine", "normalization")


def model_spec(model_path):
    """None (the shipped model) for an empty path, else the checked ``Path``.

    Raises:
        FileNotFoundError: a path that does not exist, naming it.
    """
    text = str(model_path or "").strip()
    if text in ("", "."):
        return None
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    return path


def prepare_images(layer, normalization):
    """The layer's data checked and normalized as ``fusionnet predict`` does it.

    Returns:
        (H, W) or (N, H, W) float32 in [0, 1], the layer's shape.

    Raises:
        ValueError: a colour, multiscale or non-2D/3D layer, NaN/inf values.
    """
    from fusionnet_tf.data import normalize
    from fusionnet_tf.data.normalize import check_finite

    raw = layer_array(layer, "image")
    check_finite(raw, f"image layer '{layer.name}'")
    return normalize(raw, mode=normalization)


class PredictWidget(FunctionGui):
    """The "Predict membranes" dock widget (a magicgui ``FunctionGui``).

    Calling it (``widget()``) starts a prediction with the current settings
    and returns its napari worker (None if the input was refused); the new
    layer "<image> membranes" appears when the worker returns (replacing the
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
        super().__init__(self.predict_membranes, call_button=TITLE, param_options=OPTIONS)
        remember_settings(self, SETTINGS, "predict")
        self.worker = None
        self.prediction_engine = acquire_engine()
        self.native.destroyed.connect(release_engine)  # the dock (or the viewer) closed
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.cancel_button.changed.connect(self.cancel)
        self.extend([self.progress, self.cancel_button])

    def predict_membranes(self, viewer: napari.viewer.Viewer, image: Image,
                          model_path: Path = Path(""), tile_size: int = 512, overlap: int = 64,
                          tta: int = 8, precision: str = "float32", engine: str = "auto",
                          normalization: str = "slice"):
        """Check the input, then start the worker; returns it (None if refused)."""
        if self.worker is not None:
            show_info(f"{TITLE}: a prediction is already running")
            return None
        with report_errors(TITLE):
            from fusionnet_tf.inference.predictor import check_precision_applies

            model = model_spec(model_path)
            check_precision_applies(precision, model)
            images = prepare_images(image, normalization)
            options = {"tile_shape": tile_size, "overlap": overlap, "tta": tta,
                       "precision": precision, "engine": engine}
            return self.start(viewer or napari.current_viewer(), image, images, model, options)
        return None

    def start(self, viewer, image, images, model, options):
        """Run the engine in a napari worker; connect progress, result and errors."""
        worker = create_worker(self.prediction_engine.run, model, images, options,
                               _connect={"errored": self._errored}, _start_thread=False)
        worker.yielded.connect(self._step)
        worker.returned.connect(lambda result: self._returned(viewer, image, result))
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
    def _returned(cls, viewer, image, result):
        if isinstance(result, PredictionFailed):
            show_error(f"{TITLE}: {result.message}")
        elif isinstance(result, PredictionCancelled):
            show_info(f"{TITLE}: cancelled; no layer added")
        else:
            cls._add_layer(viewer, image, result)

    @staticmethod
    def _add_layer(viewer, image, result):
        add_or_replace(viewer, image.name + OUTPUT_SUFFIX, result, "image", like=image,
                       colormap="magma", contrast_limits=(0.0, 1.0), blending="additive",
                       opacity=0.6)

    @staticmethod
    def _errored(exc):
        show_error(f"{TITLE}: {exc}")

    def _finished(self):
        self.worker = None
        self.cancel_button.enabled = False
        self.call_button.enabled = True


def make_predict_widget():
    """npe2 widget command: a new ``PredictWidget``."""
    return PredictWidget()
