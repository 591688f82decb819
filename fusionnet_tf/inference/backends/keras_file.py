"""Keras runtime: ``.keras`` (and legacy ``.h5``) files, loaded as a ``keras.Model``."""

import json
import zipfile
from pathlib import Path


def load(path):
    """The ``keras.Model`` saved in ``path``, not compiled.

    Args:
        path: Path of a ``.keras`` zip archive or an HDF5 ``.h5`` file.

    Returns:
        ``keras.Model`` (the Predictor wraps it for inference).

    Raises:
        ValueError: the file is not a Keras model file (one line, naming it).
    """
    path = Path(path)
    check_keras_file(path)
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as error:
        text = " ".join(str(error).split())
        raise ValueError(f"model {path} is not a valid Keras model file ({text})") from error


def check_keras_file(path):
    """Raise ValueError unless ``path`` looks like a Keras file (a ``.keras`` zip or HDF5 ``.h5``).

    Keras itself says ``File not found`` for a ``.keras`` file that exists
    but is not a zip archive.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ValueError(f"model {path} is not a valid model file: a .keras file is a zip "
                         f"archive saved by Keras (model.save)")
    if suffix == ".h5":
        import h5py

        if not h5py.is_hdf5(path):
            raise ValueError(f"model {path} is not a valid model file: a .h5 model is an HDF5 "
                             f"file saved by Keras")


def keras_file_spatial_dims(path):
    """Spatial axes (2 or 3) of a ``.keras`` file from its ``config.json``, without TensorFlow.

    Returns:
        2 or 3 (the input layer's ``batch_shape`` length - 2), or None when
        the file is not a readable ``.keras`` archive with an input layer.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        for layer in config["config"]["layers"]:
            if layer.get("class_name") == "InputLayer":
                return len(layer["config"]["batch_shape"]) - 2
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        pass
    return None
