"""A small JSON model card written next to every exported artifact.

The card records what a deployment needs to feed the artifact correctly and
to trace it back: architecture knobs, input spec, normalization, output
convention, quantization and its tolerance, the training config hash and the
library versions.
"""

import datetime
import hashlib
import json
from pathlib import Path

from fusionnet_tf.io_utils import atomic_path

NORMALIZATION = ("per-slice min-max to float32 [0, 1]: (x - min) / (max - min), constant "
                 "slices -> 0; fusionnet_tf.data.normalize(stack, mode='slice')")
OUTPUT_CONVENTION = ("float32 sigmoid membrane probability in [0, 1]; 1 = membrane, "
                     "0 = cell interior")
# File names looked for next to a .keras model when no training config is given.
TRAINING_CONFIG_NAMES = ("config.yaml", "resolved_config.yaml", "train_config.yaml",
                         "config.json")


def file_sha256(path):
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_training_config(model_path):
    """A training config saved next to ``model_path`` (or one folder up), or None."""
    if model_path is None:
        return None
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    for candidate_dir in (folder, folder.parent):
        for name in TRAINING_CONFIG_NAMES:
            if (candidate_dir / name).is_file():
                return candidate_dir / name
    return None


def architecture_knobs(model):
    """Architecture name, base filters, depth and parameter count of a built model."""
    from keras import layers

    from fusionnet_tf.models import input_multiple, model_depth

    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    return {
        "architecture": model.name,
        "base_filters": int(convs[0].filters) if convs else None,
        "depth": model_depth(model),
        "parameters": int(model.count_params()),
        "input_multiple": input_multiple(model),
    }


def library_versions():
    """Versions of the libraries that produced the artifact."""
    import importlib.metadata

    import fusionnet_tf

    versions = {"fusionnet_tf": fusionnet_tf.__version__}
    for package in ("tensorflow", "keras", "numpy", "tf2onnx", "onnx", "onnxruntime",
                    "ai-edge-litert"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def build_model_card(model, fmt, artifact, signatures=None, quantization="none",
                     tolerance=None, training_config=None, extra=None):
    """Assemble the model card dict.

    Args:
        model: the exported ``keras.Model``.
        fmt: str. ``"saved_model"``, ``"litert"``, ``"onnx"`` or ``"tensorrt"``.
        artifact: str. File or folder name of the artifact.
        signatures: optional dict describing inputs/outputs; defaults to the
            float (batch, H, W, 1) input and output.
        quantization: str. ``"none"``, ``"fp16"``, ``"dynamic-int8"``, ``"int8"``.
        tolerance: optional str stating the expected deviation from Keras.
        training_config: optional path of the training config; its SHA-256 is
            recorded.
        extra: optional dict merged into the card.

    Returns:
        dict, JSON-serialisable.
    """
    knobs = architecture_knobs(model)
    multiple = knobs["input_multiple"]
    card = {
        "model_card_version": 1,
        "format": fmt,
        "artifact": str(artifact),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": knobs,
        "input": {"name": "image", "dtype": "float32", "layout": "NHWC",
                  "shape": ["batch", "H", "W", 1],
                  "constraint": f"H and W multiples of {multiple}", "range": [0.0, 1.0]},
        "normalization": NORMALIZATION,
        "output": {"name": "membrane_probability", "dtype": "float32",
                   "shape": ["batch", "H", "W", 1], "convention": OUTPUT_CONVENTION},
        "signatures": signatures,
        "quantization": quantization,
        "tolerance_vs_keras": tolerance,
        "training_config": None,
        "training_config_sha256": None,
        "versions": library_versions(),
    }
    if training_config is not None:
        card["training_config"] = str(training_config)
        card["training_config_sha256"] = file_sha256(training_config)
    card.update(extra or {})
    return card


def card_path_for(artifact):
    """``<folder>/<stem>.model_card.json`` next to a file artifact."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.with_suffix("").name + ".model_card.json")


def write_model_card(card, path):
    """Write ``card`` as indented JSON to ``path`` atomically; return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return path
