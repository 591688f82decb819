"""Load a model for inference: one adapter per runtime behind one ``load_model``.

Each runtime has one small module that loads its kind of file and returns
what the ``Predictor`` runs (as bioimageio.core has a ``ModelAdapter`` per
weight format behind one factory):

============  ================================  ===================  ======================
runtime       file                              module               returns
============  ================================  ===================  ======================
keras         ``.keras`` (or legacy ``.h5``)    ``keras_file``       ``keras.Model``
saved_model   folder with ``saved_model.pb``    ``saved_model``      ``SavedModelFunction``
onnx          ``.onnx``                         ``onnx_runner``      ``OnnxRunner``
litert        ``.tflite``                       ``litert_runner``    ``LiteRTRunner``
bioimageio    bioimage.io package ``.zip``      ``bioimageio_zip``   ``keras.Model``
============  ================================  ===================  ======================

A Keras model goes to the Predictor as it is (it folds BatchNorm, picks the
engine and precision). Every other adapter returns a *runner*: a callable
mapping a (B, H, W, 1) float32 NumPy batch in [0, 1] to (B, H, W, C) float32
(membrane probability, C = 1), with two attributes the Predictor reads:
``spatial_dims`` (2, or 3 for a 5D (B, Z, Y, X, 1) input whose output is
(B, Z, Y, X, C) affinities) and ``input_multiple`` (the side multiple tiles
are aligned to: an int, (z, y, x) for 3D, or None when unknown).

A runtime's module is imported only when a file of that runtime is loaded,
so loading a ``.keras`` file never imports onnxruntime or LiteRT. Writing
these files is ``fusionnet_tf.export``'s job: export imports from here,
never the other way round.
"""

import importlib
from pathlib import Path

# runtime -> (module under fusionnet_tf.inference.backends, keyword options its load takes)
RUNTIMES = {
    "keras": ("keras_file", ()),
    "saved_model": ("saved_model", ()),
    "onnx": ("onnx_runner", ("providers",)),
    "litert": ("litert_runner", ("num_threads",)),
    "bioimageio": ("bioimageio_zip", ()),
}
# file suffix -> runtime (SavedModels are folders)
SUFFIX_RUNTIMES = {".keras": "keras", ".h5": "keras", ".zip": "bioimageio",
                   ".onnx": "onnx", ".tflite": "litert"}
# model file suffixes load_model reads (besides SavedModel folders)
MODEL_SUFFIXES = tuple(SUFFIX_RUNTIMES)


def resolve_model_path(path_or_name):
    """The file or folder ``load_model`` reads for ``path_or_name``.

    Args:
        path_or_name: a ``Path`` (always a path), or a str: the name of a
            shipped model (``fusionnet_tf.pretrained.REGISTRY``, e.g.
            ``"isbi2012"``) or a path.

    Returns:
        ``Path``.

    Raises:
        ValueError: a str that reads as a model name (no folder separator,
            no suffix, nothing of that name on disk) but is not a known one.
        FileNotFoundError: a known name whose weights are not shipped.
    """
    if isinstance(path_or_name, str):
        from fusionnet_tf.pretrained import is_model_name, pretrained_path

        if is_model_name(path_or_name):
            return pretrained_path(path_or_name)
    return Path(path_or_name)


def runtime_of(path):
    """The runtime (a ``RUNTIMES`` key) that loads ``path``, from its suffix or folder.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a folder without ``saved_model.pb``, or a file suffix
            not in ``MODEL_SUFFIXES``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ValueError(f"`model` folder is not a SavedModel (no saved_model.pb): {path}")
        return "saved_model"
    runtime = SUFFIX_RUNTIMES.get(path.suffix.lower())
    if runtime is None:
        raise ValueError(
            f"`model` must be a {', '.join(MODEL_SUFFIXES)} file or a SavedModel folder; "
            f"received {path}"
        )
    return runtime


def load_model(path_or_name, **options):
    """Load a model for inference from a file, a SavedModel folder or a shipped model's name.

    Args:
        path_or_name: str or Path. A ``.keras`` (or legacy ``.h5``) file saved
            by Keras, a bioimage.io package ``.zip`` (its ``keras_v3``
            weights), an ``.onnx`` or ``.tflite`` file written by
            ``fusionnet export``, a TensorFlow SavedModel directory (with a
            ``serving_default`` signature taking (B, H, W, 1) float32), or
            the name of a shipped model (``"isbi2012"``, ``"snemi3d"``; see
            ``resolve_model_path``). SavedModels, ``.onnx`` files and
            packages of 3D affinity models (5D input (B, Z, Y, X, 1)) load
            too: their runners have ``spatial_dims = 3`` and (z, y, x)
            ``input_multiple``; their offsets are read from
            ``MODEL.offsets.json`` beside them (``read_model_offsets``).
        **options: keywords of one runtime's loader: ``providers`` (onnx:
            onnxruntime execution providers, default CPU) and ``num_threads``
            (litert: interpreter threads).

    Returns:
        A ``keras.Model`` for Keras files and packages; otherwise a runner
        (see the module docstring): ``SavedModelFunction``, ``OnnxRunner``
        (onnxruntime) or ``LiteRTRunner`` (LiteRT).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is none of these, a package that ``fusionnet
            predict`` cannot run (see ``load_package_model``), an unknown
            model name, or an option the file's runtime does not take.

    Example:
    >>> model = load_model("runs/fusionnet/best.keras")
    >>> runner = load_model("onnx/fusionnet.onnx", providers=["CPUExecutionProvider"])
    """
    path = resolve_model_path(path_or_name)
    runtime = runtime_of(path)
    module_name, accepted = RUNTIMES[runtime]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) or "no options"
        raise ValueError(f"load_model: option {unknown[0]!r} does not apply to the {runtime} "
                         f"model {path} (it takes {takes})")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return module.load(path, **options)


__all__ = ["load_model", "resolve_model_path", "runtime_of", "RUNTIMES", "MODEL_SUFFIXES"]
