""""Predict membranes": an EM image layer -> a membrane probability layer.

The image is checked and normalized in the viewer's thread exactly as
``fusionnet predict`` does it (``check_finite``, then ``normalize`` per slice
by default); the model is loaded and run in a napari worker thread through
``Predictor.predict_steps``, which reports ``(done, total)`` tiles to the
progress bar. Cancel quits the worker at the next step, and nothing is added
then. Errors (bad layer, missing model file, a tile size the model refuses)
become napari notifications.
"""

from pathlib import Path

import napari
from magicgui.widgets import FunctionGui, ProgressBar, PushButton
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info

from fusionnet_tf.choices import ENGINES, NORMALIZATION_MODES, PRECISIONS, TTA_VALUES
from fusionnet_tf.napari.layers import add_or_replace, layer_array, report_errors, show_error

TITLE = "Predict membranes"
# the Predictor engines that never compile with XLA (safe next to Mesa's LLVM)
NO_XLA_ENGINES = ("plain", "frozen")
OUTPUT_SUFFIX = " membranes"  # the output layer is "<image name> membranes"

# Defaults are those of `fusionnet predict` (cli/predict.py add_tiling_arguments), except
# engine: "plain" here, since XLA (LLVM) crashes a process whose OpenGL driver is Mesa's.
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
               "tooltip": "plain: TensorFlow's oneDNN kernels; frozen: the same with the "
                          "weights as constants (faster calls for wide models, slower start); "
                          "xla / auto (times plain, frozen and XLA) compile with XLA, whose "
                          "LLVM clashes with Mesa's OpenGL driver (software or Intel/AMD "
                          "graphics) in the viewer's process."},
    "normalization": {"choices": list(NORMALIZATION_MODES)},
}


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


def mesa_llvm_loaded(maps_file="/proc/self/maps"):
    """True if this process has loaded an LLVM library (Mesa's OpenGL driver does).

    TensorFlow bundles its own LLVM, and the two clash in one process: a
    first TensorFlow import, and any XLA compilation, crash once Mesa's
    libLLVM is loaded (software rendering, Intel/AMD graphics). False where
    ``maps_file`` cannot be read (not Linux).
    """
    try:
        with open(maps_file) as handle:
            return "libLLVM" in handle.read()
    except OSError:
        return False


def import_tensorflow(engine="plain", maps_file="/proc/self/maps"):
    """Import TensorFlow and Keras in the viewer's thread, or refuse what would crash.

    Args:
        engine: the Predictor engine the run will use; ``"xla"`` and
            ``"auto"`` compile with XLA (``"plain"`` and ``"frozen"`` do not).
        maps_file: where the loaded libraries are listed (Linux).

    Raises:
        ValueError: naming the way out, if Mesa's LLVM is loaded and
            TensorFlow is not yet (start napari with
            ``python -m fusionnet_tf.napari``) or ``engine`` needs XLA.
    """
    import sys

    needs_xla = engine not in NO_XLA_ENGINES
    if (needs_xla or "tensorflow" not in sys.modules) and mesa_llvm_loaded(maps_file):
        if "tensorflow" not in sys.modules:
            raise ValueError("TensorFlow cannot start in this napari process: its LLVM clashes "
                             "with the one Mesa's OpenGL driver has loaded. Start napari with "
                             "'python -m fusionnet_tf.napari' (it loads TensorFlow first)")
        raise ValueError(f"engine {engine!r} compiles with XLA, whose LLVM clashes with the one "
                         "Mesa's OpenGL driver has loaded in this process; choose engine "
                         "'plain' or 'frozen'")
    import keras  # noqa: F401
    import tensorflow  # noqa: F401


class PredictionFailed:
    """What the worker returns instead of a result when the user's input was refused.

    Attributes:
        error: the ``ValueError`` / ``OSError`` / ``ImportError`` raised.
    """

    def __init__(self, error):
        self.error = error


def prediction_steps(model, images, **predictor_options):
    """Generator run by the worker: load ``model``, then ``Predictor.predict_steps``.

    User errors (a corrupt model file, a tile size or overlap the Predictor
    refuses) are returned as ``PredictionFailed`` rather than raised, so the
    widget shows one readable notification and napari no traceback; other
    exceptions (bugs) propagate.

    Args:
        model: None (the shipped model) or a path for ``load_model``.
        images: (H, W) or (N, H, W) float32 in [0, 1].
        **predictor_options: ``Predictor`` arguments (tile_shape, overlap, ...).

    Yields:
        ``(done, total)`` tile counts.

    Returns:
        float32 membrane probability of ``images``' shape, or ``PredictionFailed``.
    """
    from fusionnet_tf.inference import Predictor, load_model
    from fusionnet_tf.pretrained import load_pretrained

    try:
        network = load_pretrained() if model is None else load_model(model)
        predictor = Predictor(network, **predictor_options)
        return (yield from predictor.predict_steps(images))
    except (ValueError, OSError, ImportError) as exc:
        return PredictionFailed(exc)


class PredictWidget(FunctionGui):
    """The "Predict membranes" dock widget (a magicgui ``FunctionGui``).

    Calling it (``widget()``) starts a prediction with the current settings
    and returns its napari worker (None if the input was refused); the new
    layer "<image> membranes" appears when the worker returns (replacing the
    data of an existing layer of that name). ``cancel()`` stops it.

    Attributes:
        worker: the running worker, or None.
        progress: the progress bar (tiles done of total).
        cancel_button: the Cancel button.
    """

    def __init__(self):
        super().__init__(self.predict_membranes, call_button=TITLE, param_options=OPTIONS)
        self.worker = None
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.cancel_button.changed.connect(self.cancel)
        self.extend([self.progress, self.cancel_button])

    def predict_membranes(self, viewer: napari.viewer.Viewer, image: Image,
                          model_path: Path = Path(""), tile_size: int = 512, overlap: int = 64,
                          tta: int = 8, precision: str = "float32", engine: str = "plain",
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
            import_tensorflow(engine)
            return self.start(viewer or napari.current_viewer(), image, images, model, options)
        return None

    def start(self, viewer, image, images, model, options):
        """Run ``prediction_steps`` in a worker; connect progress, result and errors."""
        worker = create_worker(prediction_steps, model, images, **options,
                               _connect={"errored": self._errored}, _start_thread=False)
        worker.yielded.connect(self._step)
        worker.returned.connect(lambda result: self._returned(viewer, image, result))
        worker.aborted.connect(lambda: show_info(f"{TITLE}: cancelled; no layer added"))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.progress.value = 0
        self.cancel_button.enabled = True
        self._call_button.enabled = False
        worker.start()
        return worker

    def cancel(self, *_):
        """Stop the running prediction at its next step (no layer is added)."""
        if self.worker is not None:
            self.worker.quit()

    def _step(self, counts):
        done, total = counts
        self.progress.max = max(int(total), 1)
        self.progress.value = int(done)

    @classmethod
    def _returned(cls, viewer, image, result):
        if isinstance(result, PredictionFailed):
            cls._errored(result.error)
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
        self._call_button.enabled = True


def make_predict_widget():
    """npe2 widget command: a new ``PredictWidget``."""
    return PredictWidget()
