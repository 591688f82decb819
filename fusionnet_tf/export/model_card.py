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

from fusionnet_tf.io.outputs import atomic_path

NORMALIZATION = ("per-slice min-max to float32 [0, 1]: (x - min) / (max - min), constant "
                 "slices -> 0; fusionnet_tf.data.normalize(stack, mode='slice')")
AFFINITY_OUTPUT_NAME = "affinities"
OUTPUT_CONVENTION = ("float32 sigmoid membrane probability in [0, 1]; 1 = membrane, "
                     "0 = cell interior")
# File names looked for next to a .keras model when no training config is given.
TRAINING_CONFIG_NAMES = ("config.yaml", "resolved_config.yaml", "train_config.yaml",
                         "config.json")
FUSIONNET_CITATION = (
    "Quan, T. M., Hildebrand, D. G. C. & Jeong, W.-K. (2016). FusionNet: A deep fully "
    "residual convolutional neural network for image segmentation in connectomics. "
    "arXiv:1612.05360", "10.48550/arXiv.1612.05360")
UNET_CITATION = (
    "Ronneberger, O., Fischer, P. & Brox, T. (2015). U-Net: Convolutional networks for "
    "biomedical image segmentation. MICCAI 2015, LNCS 9351, 234-241",
    "10.1007/978-3-319-24574-4_28")
FCN_CITATION = (
    "Long, J., Shelhamer, E. & Darrell, T. (2015). Fully convolutional networks for semantic "
    "segmentation. CVPR 2015, 3431-3440", "10.1109/CVPR.2015.7298965")
_FUSIONNET_TEXT = ("FusionNet (Quan et al. 2016): a U-Net-like encoder-decoder with residual "
                   "blocks and summation skips")
_FCN_TEXT = ("FCN-{0} (Long et al. 2015): a VGG16 encoder, convolutionalized classifier and "
             "learned upsampling, fused with pool4{1} scores")
# Architecture families fusionnet_tf.models builds: the title, one-line
# description, paper (text, DOI) and tags a package or card states for them.
ARCHITECTURES = {
    "fusionnet": {"title": "FusionNet", "description": _FUSIONNET_TEXT,
                  "cite": (FUSIONNET_CITATION,), "tags": ("fusionnet", "residual")},
    "fusionnet3d": {"title": "FusionNet 3D", "description": "3D " + _FUSIONNET_TEXT,
                    "cite": (FUSIONNET_CITATION,), "tags": ("fusionnet", "residual", "3d")},
    "unet": {"title": "U-Net", "description": "U-Net (Ronneberger et al. 2015): an encoder-"
             "decoder with concatenation skips", "cite": (UNET_CITATION,), "tags": ("unet",)},
    "fcn8s": {"title": "FCN-8s", "description": _FCN_TEXT.format("8s", " and pool3"),
              "cite": (FCN_CITATION,), "tags": ("fcn", "fcn8s", "vgg16")},
    "fcn16s": {"title": "FCN-16s", "description": _FCN_TEXT.format("16s", ""),
               "cite": (FCN_CITATION,), "tags": ("fcn", "fcn16s", "vgg16")},
    "fcn32s": {"title": "FCN-32s", "description": "FCN-32s (Long et al. 2015): a VGG16 "
               "encoder, convolutionalized classifier and one learned x32 upsampling",
               "cite": (FCN_CITATION,), "tags": ("fcn", "fcn32s", "vgg16")},
}


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


def detect_architecture(model):
    """The ``ARCHITECTURES`` key of a built model, from its layers, else its name, else None.

    The builders' layer names tell the families apart whatever the model is
    called: FCN's ``score_fr`` (``fuse_pool3``: 8s, ``fuse_pool4``: 16s,
    neither: 32s), U-Net's ``dec*_skip_concat``, FusionNet's
    ``dec*_skip_add`` (``fusionnet3d`` with 3D convolutions).
    """
    from keras import layers

    names = {layer.name for layer in model.layers}
    decoders = {name.rsplit("_", 1)[-1] for name in names
                if name.startswith("dec") and "_skip_" in name}
    if "score_fr" in names:
        return ("fcn8s" if "fuse_pool3" in names else
                "fcn16s" if "fuse_pool4" in names else "fcn32s")
    if decoders == {"concat"}:
        return "unet"
    if decoders == {"add"}:
        three_d = any(isinstance(layer, layers.Conv3D) for layer in model.layers)
        return "fusionnet3d" if three_d else "fusionnet"
    return model.name if model.name in ARCHITECTURES else None


def is_3d_model(model):
    """True for a Keras model with a 5D input (B, Z, Y, X, C): a 3D affinity model."""
    shape = getattr(model, "input_shape", None)
    return isinstance(shape, tuple) and len(shape) == 5


# formats that take 3D affinity models (5D input); the others are 2D runtimes
FORMATS_3D = ("saved_model", "onnx", "bioimageio")


def refuse_3d_message(runtime):
    """One line: ``runtime`` exports 2D models only, and which formats take 3D ones."""
    return (f"--format {runtime} exports 2D models only; a 3D affinity model (input (B, Z, Y, "
            f"X, 1)) exports with --format {', '.join(FORMATS_3D)}")


def check_2d_model(model, runtime):
    """ValueError (``refuse_3d_message``) if ``model`` is 3D; the 2D-only exporters call it."""
    if is_3d_model(model):
        raise ValueError(refuse_3d_message(runtime))
    return model


def input_multiples_3d(model):
    """(z, y, x) multiples a 3D model's input needs: the product of its pooling strides per axis."""
    from keras import layers

    multiples = [1, 1, 1]
    for layer in model.layers:
        if isinstance(layer, (layers.MaxPooling3D, layers.AveragePooling3D)):
            multiples = [m * int(s) for m, s in zip(multiples, layer.strides)]
    return tuple(multiples)


def architecture_knobs(model):
    """Architecture name, family, base filters, depth and parameter count of a built model.

    ``architecture`` is the Keras model's name; ``family`` its
    ``ARCHITECTURES`` key (``detect_architecture``) or None; ``input_multiple``
    an int (2D) or the [z, y, x] multiples of a 3D model.
    """
    from keras import layers

    from fusionnet_tf.models import input_multiple, model_depth

    convs = [layer for layer in model.layers if isinstance(layer, (layers.Conv2D, layers.Conv3D))]
    multiple = input_multiple(model)
    if len(model.input_shape) == 5:  # 3D: (z, y, x) multiples
        multiple = list(input_multiples_3d(model))
    return {
        "architecture": model.name,
        "family": detect_architecture(model),
        "base_filters": int(convs[0].filters) if convs else None,
        "depth": model_depth(model),
        "parameters": int(model.count_params()),
        "input_multiple": multiple,
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
    if len(model.input_shape) == 5:  # a 3D affinity model; its offsets come in ``extra``
        card.update(affinity_card_fields(model, (extra or {}).get("offsets")))
    if training_config is not None:
        card["training_config"] = str(training_config)
        card["training_config_sha256"] = file_sha256(training_config)
    card.update(extra or {})
    return card


def affinity_card_fields(model, offsets):
    """Model card fields of a 3D affinity model: input/output spec, offsets, input multiple."""
    channels = int(model.output_shape[-1])
    zm, ym, xm = input_multiples_3d(model)
    return {
        "input": {"name": "image", "dtype": "float32", "layout": "NDHWC",
                  "shape": ["batch", "Z", "Y", "X", 1],
                  "constraint": f"Z, Y, X multiples of {zm}, {ym}, {xm}", "range": [0.0, 1.0]},
        "output": {"name": AFFINITY_OUTPUT_NAME, "dtype": "float32",
                   "shape": ["batch", "Z", "Y", "X", channels],
                   "convention": "float32 sigmoid affinity in [0, 1]; channel c = probability "
                                 "that voxel p and p + offsets[c] belong to the same object"},
        "offsets": None if offsets is None else [[int(v) for v in o] for o in offsets],
        "input_multiple_zyx": [zm, ym, xm],
    }


def offsets_field(holder):
    """``{"offsets": [[dz, dy, dx], ...]}`` of an object with known ``offsets``, else ``{}``."""
    offsets = getattr(holder, "offsets", None)
    return {} if offsets is None else {"offsets": [[int(v) for v in o] for o in offsets]}


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
