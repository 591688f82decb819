"""BioImage Model Zoo packages (bioimage.io model description format 0.5).

A package is one ``.zip`` that Fiji/deepImageJ, QuPath, ilastik, napari and
``bioimageio.core`` open: ``rdf.yaml`` (the description), the weights, test
tensors, sample images, a cover and documentation. ``export_bioimageio``
writes one from a Keras membrane model:

- weights: ``keras_v3`` (the ``.keras`` file, the parent of the others),
  ``tensorflow_saved_model_bundle`` (a zipped SavedModel from
  ``saved_model.export_plain_saved_model`` with the endpoints ``serve`` and
  ``serving_default``, each returning ``{"membrane_probability": tensor}``;
  bioimageio.core 0.11 loads it with ``keras.layers.TFSMLayer``, trying
  ``serve`` first, and requires a dict result) and ``onnx`` (from
  ``onnx.export_onnx``);
- input ``raw``: axes (batch, y, x, channel), float32 raw intensities (cast
  from uint8/uint16 by the consumer), y and x of size ``min + n * step`` with
  ``step`` the model's input multiple (``2**depth``) and ``min`` the smallest
  multiple above twice the halo; preprocessing ``scale_range`` with
  percentiles 0 and 100 over (y, x), i.e. per-sample min-max, which is
  ``fusionnet_tf.data.normalize(mode="slice")`` up to the format's ``eps``
  (1e-6 in the denominator: at most 1e-6 / (max - min) apart);
- output ``membrane_probability``: same axes and size, float32 in [0, 1],
  with a ``halo`` measured by ``measure_halo`` (pixels near a tile border that
  differ from the same pixels predicted inside a larger image); no
  postprocessing (the sigmoid is in the network);
- test tensors from a real tile of the example slices (by default the shipped
  ISBI 2012 test slices), ``.tif`` sample tensors, a cover (the tile and its
  predicted membranes), documentation, license and the reproducibility
  tolerance (``REPRODUCIBILITY``);
- what the package states about the model (``package_metadata``): the
  architecture read from the model's layers (FusionNet, U-Net or FCN, with
  its paper), the user's name, description, training data, tags and authors,
  and the ISBI 2012 training data, tags, description and data citations
  (``SHIPPED``) only for the shipped model (``shipped=True``).

The description is validated by ``bioimageio.spec`` while it is built and
saved, and (``test=True``) every weight format is run by
``bioimageio.core.test_model`` on the package before it is renamed into
place: a package that fails is never written. The test runs in a child
process whose working folder is a temporary one (bioimageio.core unpacks
SavedModel bundles into the current folder); this process's working folder
and environment are never changed.

Needs ``pip install "fusionnet-tf[bioimageio]"`` (bioimageio.core 0.11 pins
bioimageio.spec 0.5.12.0, which cannot save packages under pydantic >= 2.12).
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

# reading and loading packages is the bioimage.io backend's (load_package_model re-exported)
from fusionnet_tf.inference.backends.bioimageio_zip import (  # noqa: F401
    load_package_model, read_package_description)
from fusionnet_tf.io.outputs import atomic_path

INPUT_ID = "raw"
OUTPUT_ID = "membrane_probability"
# Weight formats in the package; keras_v3 is the parent of the others.
WEIGHT_FORMATS = ("keras_v3", "tensorflow_saved_model_bundle", "onnx")
# A pixel lies inside the halo if a tile's prediction there differs from the
# whole-image prediction by more than this (membrane probability).
HALO_TOLERANCE = 1e-3
# Measurement tile sides tried in turn until the border effect fits in one.
HALO_TILES = (256, 512, 1024)
# Side of the test tile (rounded up to a size the package accepts).
TEST_TILE = 512
# bioimageio's reproducibility tolerance for the test output (all formats).
# On CPU the formats agree with Keras within 1e-5 (measured, see README);
# the slack covers other hardware (e.g. GPU kernels).
REPRODUCIBILITY = {"absolute_tolerance": 1e-4, "relative_tolerance": 1e-3,
                   "mismatched_elements_per_million": 100}
SCALE_RANGE_EPS = 1e-6
DOCUMENTATION_NAME = "README.md"
ISBI_CITATION = (
    "Arganda-Carreras, I. et al. (2015). Crowdsourcing the creation of image segmentation "
    "algorithms for connectomics. Frontiers in Neuroanatomy 9:142 (ISBI 2012 data and "
    "metrics)", "10.3389/fnana.2015.00142")
DATA_CITATION = (
    "Cardona, A. et al. (2010). An integrated micro- and macroarchitectural analysis of the "
    "Drosophila brain by computer-assisted serial section electron microscopy. PLoS Biology "
    "8(10): e1000502", "10.1371/journal.pbio.1000502")
# The spec's ``training_data`` takes a bioimage.io dataset id or a full dataset
# description (whose FAIR fields need URLs); the training data is referenced
# in ``config.fusionnet_tf.training_data``, the citations and the documentation.
TRAINING_DATA = {
    "name": "ISBI 2012 EM segmentation challenge",
    "description": "ssTEM of the Drosophila first instar larva ventral nerve cord, 4 x 4 x 50 "
                   "nm voxels, 30 training slices of 512 x 512 with membrane labels (the "
                   "shipped model trained on slices 0-19, validated on 20-24)",
    "doi": [ISBI_CITATION[1], DATA_CITATION[1]],
}
# Tags of every package (the task, modality and weight formats); the
# architecture's tags (``model_card.ARCHITECTURES``) and the user's are added.
BASE_TAGS = ("electron-microscopy", "membranes", "semantic-segmentation", "2d", "keras",
             "tensorflow")
# What only the shipped model (fusionnet_tf/weights/fusionnet_isbi2012.keras)
# states: its training data, ISBI tags, description and data citations.
SHIPPED = {
    "description": "Cell-membrane probability maps for 2D electron-microscopy images of "
                   "neural tissue: FusionNet (Quan et al. 2016) trained on the ISBI 2012 "
                   "challenge data (fusionnet-tf's shipped model).",
    "training_data": TRAINING_DATA,
    "tags": ("unet", "connectomics", "neurons", "isbi2012"),
    "cite": (ISBI_CITATION, DATA_CITATION),
    "authors": ("fusionnet-tf contributors",),
}
# Authors of a package whose exporter names none (it is not the shipped model).
UNKNOWN_AUTHORS = ("unknown (exported with fusionnet-tf)",)
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# === Checks ===

def check_name(name):
    """Return ``name`` if it is a plain file stem (letters, digits, ``._-``), else ValueError."""
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError("`name` must be a file name of letters, digits, '.', '_' or '-' (no "
                         f"path separators); received name={name!r}")
    return name


def check_weight_formats(weight_formats):
    """Return ``weight_formats`` as a tuple; ValueError for unknown ones or no keras_v3."""
    formats = tuple(weight_formats)
    unknown = [fmt for fmt in formats if fmt not in WEIGHT_FORMATS]
    if unknown or "keras_v3" not in formats or len(set(formats)) != len(formats):
        raise ValueError(f"`weight_formats` must be distinct values of {WEIGHT_FORMATS} "
                         f"including 'keras_v3' (the parent); received {list(formats)}")
    return formats


def readme_header(meta, knobs, task):
    """The first lines of a package README: title, description, architecture, "Input and output"."""
    return [
        f"# {meta['name']}: {task} ({meta['title']}, base {knobs['base_filters']}, "
        f"depth {knobs['depth']})",
        "",
        meta["description"],
        "",
        f"Architecture: {meta['architecture_description']}. Exported by "
        "[fusionnet-tf](https://pypi.org/project/fusionnet-tf/) "
        "(`fusionnet export --format bioimageio`).",
        "",
        "## Input and output",
        "",
    ]


def check_single_io_model(model):
    """ValueError unless ``model`` is a ``keras.Model`` with one input and one output."""
    import keras

    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model; received {type(model).__name__}")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"a bioimage.io package needs a single-input single-output model; "
                         f"{model.name!r} has {len(model.inputs)} inputs and "
                         f"{len(model.outputs)} outputs")


def check_model(model):
    """ValueError unless ``model`` maps one (B, H, W, 1) image to one (B, H, W, 1) map."""
    check_single_io_model(model)
    for what, shape in (("input", model.input_shape), ("output", model.output_shape)):
        if len(shape) != 4 or shape[-1] != 1:
            raise ValueError(f"a bioimage.io package needs a 2D one-channel network, "
                             f"(batch, y, x, 1) -> (batch, y, x, 1); {model.name!r} has "
                             f"{what} shape {tuple(shape)}")
    if tuple(model.input_shape[1:3]) != (None, None):
        raise ValueError(f"a bioimage.io package declares a parameterized y/x size, so the "
                         f"model must accept any H and W; {model.name!r} has input shape "
                         f"{tuple(model.input_shape)}")
    return model


# === Metadata (what the package says about its model) ===

def _training_data(value):
    """None, or a dict with ``description`` (free text) and optionally ``name`` and ``doi``."""
    if value is None or isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"`training_data` must be a non-empty description or a dict; received "
                         f"{value!r}")
    return {"description": value.strip()}


def _display_name(name, title):
    """bioimage.io ``name`` ``"NAME (TITLE)"``: letters, digits, ``_+- ()``, 5-64 characters."""
    text = re.sub(r"[^A-Za-z0-9_+\- ()]+", "-", f"{name} ({title})")
    return text[:64]


def package_metadata(model, name, shipped=False, description=None, training_data=None,
                     tags=(), authors=None, formats=WEIGHT_FORMATS, base_tags=BASE_TAGS,
                     derived=None):
    """What a package states about its model: its card, the user's words, the shipped defaults.

    The architecture (title, description, paper, tags) comes from the model's
    layers (``model_card.detect_architecture``): a U-Net is described and
    cited as a U-Net (Ronneberger 2015), an FCN as an FCN (Long 2015), a
    FusionNet as a FusionNet (Quan 2016). The ISBI 2012 training data, tags,
    description and data citations (``SHIPPED``) are stated only with
    ``shipped=True``.

    Args:
        model: the exported ``keras.Model``.
        name: str. The package's file stem, the user's name for the model.
        shipped: bool. True only for the shipped ISBI 2012 FusionNet
            (``load_pretrained()``). Defaults to False.
        description: str or None. One-line description. None: ``SHIPPED``'s
            for the shipped model, else one naming the architecture.
        training_data: str (free text), dict (``name``, ``description``,
            optional ``doi`` list) or None: ``SHIPPED``'s for the shipped
            model, else not stated.
        tags: iterable of str added after the derived tags.
        authors: list of author names. None: ``SHIPPED``'s for the shipped
            model, else ``UNKNOWN_AUTHORS``.
        formats: weight formats in the package (``onnx`` adds its tag).
        base_tags: the task's tags (default ``BASE_TAGS``, 2D membranes).
        derived: the default description (None: one for 2D membrane maps
            naming the architecture).

    Returns:
        dict with ``architecture`` (``ARCHITECTURES`` key or None),
        ``title``, ``name`` (bioimage.io display name ``"NAME (TITLE)"``),
        ``description``, ``architecture_description``, ``cite`` (list of
        (text, doi)), ``tags`` (list of str), ``training_data`` (dict or None)
        and ``authors`` (list of str).

    Raises:
        ValueError: ``shipped=True`` for a model that is not a FusionNet, or
            an empty description or training data.
    """
    from fusionnet_tf.export.model_card import ARCHITECTURES, architecture_knobs

    knobs = architecture_knobs(model)
    family = ARCHITECTURES.get(knobs["family"])
    title = family["title"] if family else model.name
    if shipped and knobs["family"] != "fusionnet":
        raise ValueError(f"`shipped=True` states the ISBI 2012 training of the shipped FusionNet; "
                         f"{model.name!r} is a {title}")
    if description is not None and (not isinstance(description, str) or not description.strip()):
        raise ValueError(f"`description` must be a non-empty string; received {description!r}")
    extra = SHIPPED if shipped else {}
    derived = derived or (f"Cell-membrane probability maps for 2D electron-microscopy images "
                          f"({title}, base {knobs['base_filters']}, depth {knobs['depth']}), "
                          "exported by fusionnet-tf.")
    tag_list = [*base_tags, *(family["tags"] if family else ()),
                *(("onnx",) if "onnx" in formats else ()), *extra.get("tags", ()),
                *(str(tag).strip() for tag in tags)]
    return {
        "architecture": knobs["family"],
        "title": title,
        "name": _display_name(name, title),
        "description": (description or extra.get("description") or derived).strip(),
        "architecture_description": (family["description"] if family else
                                     f"Keras model {model.name!r} (not one of fusionnet-tf's "
                                     "builders)"),
        "cite": [*(family["cite"] if family else ()), *extra.get("cite", ())],
        "tags": list(dict.fromkeys(tag for tag in tag_list if tag)),
        "training_data": _training_data(training_data) or extra.get("training_data"),
        "authors": list(authors or extra.get("authors", UNKNOWN_AUTHORS)),
    }


# === Halo ===

def _predict_plane(model, image):
    """(H, W) float32 -> (H, W) float32 with the Keras model (no folding, no tiling)."""
    return np.asarray(model(image[None, :, :, None], training=False), np.float32)[0, ..., 0]


def border_profile(model, image, tile):
    """Per-distance border effect of predicting a tile on its own.

    The image is reflect-padded to (2 tile, 2 tile) (its centre keeps the
    image's pooling grid), predicted whole, and its central (tile, tile)
    region is predicted on its own. Pixels are grouped by their distance to
    the tile border (0 = outermost ring).

    Args:
        model: ``keras.Model`` (B, H, W, 1) -> (B, H, W, 1).
        image: (H, W) float32 in [0, 1], a normalized EM slice.
        tile: int. Tile side, a multiple of twice the input multiple.

    Returns:
        (tile // 2,) float32: the largest absolute difference at each distance.
    """
    image = np.asarray(image, np.float32)
    pad_y, pad_x = (max(2 * tile - side, 0) for side in image.shape)
    canvas = np.pad(image, ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)),
                    mode="reflect")[:2 * tile, :2 * tile]
    start = tile // 2
    whole = _predict_plane(model, canvas)[start:start + tile, start:start + tile]
    alone = _predict_plane(model, canvas[start:start + tile, start:start + tile])
    diff = np.abs(alone - whole)
    yy, xx = np.mgrid[:tile, :tile]
    distance = np.minimum(np.minimum(yy, xx), np.minimum(tile - 1 - yy, tile - 1 - xx))
    return np.array([diff[distance == d].max() for d in range(tile // 2)], np.float32)


def measure_halo(model, images, tolerance=HALO_TOLERANCE, tiles=HALO_TILES):
    """Border width (pixels) in which a tile's prediction differs from the whole image's.

    Args:
        model: ``keras.Model`` (B, H, W, 1) -> (B, H, W, 1).
        images: (N, H, W) or (H, W) float32 normalized EM slices; the largest
            border effect over them counts.
        tolerance: float. Largest tolerated absolute difference of membrane
            probability. Defaults to ``HALO_TOLERANCE`` (1e-3).
        tiles: tile sides to try in turn; a tile is large enough when the
            border effect leaves at least one input multiple in its centre.

    Returns:
        dict with ``halo`` (int, 0 if nothing differs), ``tile`` (the tile
        side used), ``tolerance`` and ``profile`` (the largest difference at
        each distance from the border, to 3 digits, up to ``halo`` plus one
        input multiple).

    Raises:
        ValueError: if the border effect fills even the largest tile.

    Example:
    >>> measure_halo(model, normalize(read_stack(example_path())))["halo"]
    """
    from fusionnet_tf.models import input_multiple

    stack = np.asarray(images, np.float32)
    stack = stack[None] if stack.ndim == 2 else stack
    multiple = input_multiple(model)
    for tile in tiles:
        if tile % (2 * multiple):
            continue
        profile = np.max([border_profile(model, image, tile) for image in stack], axis=0)
        above = np.nonzero(profile > tolerance)[0]
        halo = int(above.max()) + 1 if len(above) else 0
        if halo <= tile // 2 - multiple:
            return {"halo": halo, "tile": tile, "tolerance": tolerance,
                    "profile": [float(f"{value:.3g}") for value in profile[:halo + multiple]]}
    raise ValueError(f"the border effect of {model.name!r} exceeds the largest measurement tile "
                     f"{tiles[-1]} (tolerance {tolerance}); cannot declare a halo")


def input_size(halo, multiple):
    """``(min, step)`` of the parameterized y/x size: ``min`` the smallest multiple > 2 halo."""
    return multiple * (2 * halo // multiple + 1), multiple


# === Package files ===

def _center_tile(image, side):
    """(side, side) centre crop of a 2D image, reflect-padded if it is smaller."""
    pad = [max(side - length, 0) for length in image.shape]
    image = np.pad(image, [(p // 2, p - p // 2) for p in pad], mode="reflect")
    y0, x0 = ((length - side) // 2 for length in image.shape)
    return image[y0:y0 + side, x0:x0 + side]


def make_test_tensors(model, raw_tile):
    """(1, T, T, 1) float32 raw input and the model's (1, T, T, 1) output on it.

    The output is the model on ``normalize(raw_tile, mode="slice")``, which is
    what the package's ``scale_range`` preprocessing feeds it.
    """
    from fusionnet_tf.data import normalize

    raw = np.asarray(raw_tile).astype(np.float32)
    output = _predict_plane(model, normalize(raw, mode="slice"))
    return raw[None, :, :, None], output[None, :, :, None]


def cover_image(raw_tile, membrane):
    """(T, 2T, 3) uint8: the tile and its predicted membranes in red, side by side."""
    from fusionnet_tf.data import normalize
    from fusionnet_tf.inference.writers import overlay

    image = normalize(raw_tile, mode="slice")
    grey = np.repeat((image * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    return np.concatenate([grey, overlay(image, membrane)], axis=1)


def _markdown_for_package(text):
    """Model card markdown with repository-relative links and images made plain text."""
    text = re.sub(r"!\[([^\]]*)\]\((?!https?:)[^)]*\)", r"(figure: \1, in the fusionnet-tf "
                  r"repository)", text)
    return re.sub(r"\[([^\]]*)\]\((?!https?:)([^)]*)\)", r"\1 (`\2` in the fusionnet-tf "
                  r"repository)", text)


def _training_data_text(training_data):
    """One markdown paragraph on the training data (``package_metadata``'s entry)."""
    if not training_data:
        return ("Not stated: the exporter was not told what this model was trained on "
                "(`fusionnet export --training-data TEXT`).")
    text = training_data["description"]
    if training_data.get("name"):
        text = f"{training_data['name']}: {text}"
    if training_data.get("doi"):
        text += " (doi:" + ", doi:".join(training_data["doi"]) + ")"
    return text.rstrip(".") + "."


def documentation(knobs, halo, size, formats, model_card=None, meta=None,
                  test_tile="a real EM tile"):
    """The package's README.md (markdown str), with a ``## Validation`` section.

    ``meta`` is ``package_metadata``'s dict; ``test_tile`` says where the
    test input comes from.
    """
    tolerance = REPRODUCIBILITY
    lines = readme_header(meta, knobs, "membrane segmentation") + [
        f"- Input `{INPUT_ID}`: axes (batch, y, x, channel), one channel, raw EM intensities "
        "as float32 (uint8 or uint16 images cast to float). y and x: "
        f"{size[0]} + n x {size[1]} pixels (the network pools {knobs['depth']} times).",
        "- Preprocessing: `scale_range` with percentiles 0 and 100 over (y, x): per-image "
        "min-max to [0, 1], as `fusionnet predict` normalizes each slice "
        "(`fusionnet_tf.data.normalize(mode='slice')`).",
        f"- Output `{OUTPUT_ID}`: same axes and size, float32 membrane probability in [0, 1] "
        "(1 = membrane, 0 = cell interior); no postprocessing. Threshold at 0.5 for a "
        "membrane mask; 1 - p is the ISBI 2012 submission convention.",
        f"- Halo: {halo['halo']} pixels. Predicting a {halo['tile']} x {halo['tile']} tile on "
        "its own changes the membrane probability by more than "
        f"{halo['tolerance']:g} only within {halo['halo']} pixels of the tile border "
        "(measured against the same region inside a twice as large image); tile with at "
        "least this overlap.",
        "",
        "## Weights",
        "",
        f"Formats: {', '.join(formats)}. `keras_v3` is the original (Keras "
        f"{knobs['keras']}, TensorFlow backend); the others are converted from it.",
        "",
        "## Validation",
        "",
        f"The test input is {test_tile} (raw intensities); the test output is "
        "the Keras model's prediction on it. Every weight format was run on it by "
        "`bioimageio.core` when the package was written. Tolerance: absolute "
        f"{tolerance['absolute_tolerance']:g} + relative {tolerance['relative_tolerance']:g}, "
        f"{tolerance['mismatched_elements_per_million']} mismatched pixels per million. "
        "Re-run with `bioimageio test PACKAGE.zip`.",
        "",
        "## Training data",
        "",
        _training_data_text(meta["training_data"])
        + (" The model card below gives the training recipe." if model_card else ""),
        "",
        "## Citations",
        "",
    ]
    lines += [f"- {text}. doi:{doi}" for text, doi in meta["cite"]] or ["- none stated"]
    if model_card:
        lines += ["", "---", "", _markdown_for_package(model_card)]
    return "\n".join(lines) + "\n"


def write_package_files(model, folder, formats, example, halo):
    """Write weights, tensors, samples and cover into ``folder``.

    Returns:
        dict of file paths (keys: the weight formats, ``test_input``,
        ``test_output``, ``sample_input``, ``sample_output``, ``cover``) and
        ``opset`` (int, ONNX opset) and ``test_side``.
    """
    import imageio.v3 as iio
    import tifffile

    from fusionnet_tf.models import input_multiple

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"keras_v3": folder / "weights.keras"}
    model.save(files["keras_v3"])
    if "tensorflow_saved_model_bundle" in formats:
        files["tensorflow_saved_model_bundle"] = _saved_model_bundle(model, folder)
    if "onnx" in formats:
        from fusionnet_tf.export.onnx import export_onnx

        files["onnx"] = export_onnx(model, folder / "onnx", name="weights")
        files["opset"] = onnx_opset(files["onnx"])
    multiple = input_multiple(model)
    minimum, _ = input_size(halo["halo"], multiple)
    side = max(minimum, -(-TEST_TILE // multiple) * multiple)
    raw_tile = _center_tile(np.asarray(example[0]), side)
    test_input, test_output = make_test_tensors(model, raw_tile)
    for key, array in (("test_input", test_input), ("test_output", test_output)):
        files[key] = folder / f"{key}.npy"
        np.save(files[key], array)
    files["sample_input"] = folder / "sample_input.tif"
    tifffile.imwrite(files["sample_input"], np.asarray(raw_tile))
    files["sample_output"] = folder / "sample_output.tif"
    tifffile.imwrite(files["sample_output"], test_output[0, ..., 0])
    files["cover"] = folder / "cover.png"
    iio.imwrite(files["cover"], cover_image(raw_tile, test_output[0, ..., 0]))
    files["test_side"] = side
    return files


def _saved_model_bundle(model, folder):
    """Zip of a SavedModel whose ``serve``/``serving_default`` return {OUTPUT_ID: ...}."""
    from fusionnet_tf.export.saved_model import export_plain_saved_model

    saved = export_plain_saved_model(model, folder / "saved_model",
                                     endpoints=("serve", "serving_default"))
    bundle = folder / "tf_saved_model_bundle.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(saved.rglob("*")):
            archive.write(path, path.relative_to(saved).as_posix())
    return bundle


def onnx_opset(path):
    """The default-domain opset version of an ``.onnx`` file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx"))


# === Description ===

def _axes(spec, size, halo=None):
    """(batch, y, x, channel) axes of the input (``size`` = (min, step)) or the output."""
    if halo is None:
        space = [spec.SpaceInputAxis(id=spec.AxisId(axis),
                                     size=spec.ParameterizedSize(min=size[0], step=size[1]))
                 for axis in ("y", "x")]
        channel = "em"
    else:
        space = []
        for axis in ("y", "x"):
            reference = spec.SizeReference(tensor_id=spec.TensorId(INPUT_ID),
                                           axis_id=spec.AxisId(axis))
            space.append(spec.SpaceOutputAxisWithHalo(id=spec.AxisId(axis), halo=halo,
                                                      size=reference) if halo else
                         spec.SpaceOutputAxis(id=spec.AxisId(axis), size=reference))
        channel = "membrane"
    return [spec.BatchAxis(), *space, spec.ChannelAxis(channel_names=[spec.Identifier(channel)])]


def _weights(spec, files, formats, output_id=OUTPUT_ID):
    import keras
    import tensorflow as tf

    tf_version = spec.Version(tf.__version__)
    entries = {"keras_v3": spec.KerasV3WeightsDescr(
        source=files["keras_v3"], keras_version=spec.Version(keras.__version__),
        backend=("tensorflow", tf_version), comment="the original; the others convert it")}
    if "tensorflow_saved_model_bundle" in formats:
        entries["tensorflow_saved_model_bundle"] = spec.TensorflowSavedModelBundleWeightsDescr(
            source=files["tensorflow_saved_model_bundle"], tensorflow_version=tf_version,
            parent="keras_v3", comment="zipped SavedModel; endpoints 'serve' and "
            f"'serving_default' return {{'{output_id}': tensor}}")
    if "onnx" in formats:
        entries["onnx"] = spec.OnnxWeightsDescr(
            source=files["onnx"], opset_version=files["opset"], parent="keras_v3",
            comment="converted with tf2onnx (keras.Model.export(format='onnx'))")
    return spec.WeightsDescr(**entries)


def build_description(model, files, formats, halo, docs_path, meta, license="MIT",
                      extra_config=None):
    """The ``bioimageio.spec`` 0.5 ``ModelDescr`` of the package (validated on creation).

    Args:
        model: the exported ``keras.Model``.
        files: dict from ``write_package_files``.
        formats: weight formats present.
        halo: dict from ``measure_halo``.
        docs_path: Path of the documentation markdown.
        meta: dict from ``package_metadata`` (name, description, architecture,
            citations, tags, training data, authors).
        license: SPDX license id. Defaults to ``"MIT"``.
        extra_config: optional dict stored under ``config.fusionnet_tf``.

    Raises:
        ValueError: (pydantic ``ValidationError``) if the description is invalid.
    """
    from bioimageio.spec.model import v0_5 as spec

    from fusionnet_tf.export.model_card import architecture_knobs

    knobs = architecture_knobs(model)
    size = input_size(halo["halo"], knobs["input_multiple"])
    scale_range = spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
        axes=[spec.AxisId("y"), spec.AxisId("x")], min_percentile=0.0, max_percentile=100.0,
        eps=SCALE_RANGE_EPS))
    inputs = [spec.InputTensorDescr(
        id=spec.TensorId(INPUT_ID), axes=_axes(spec, size),
        description="EM image, raw intensities (uint8/uint16 cast to float32)",
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[scale_range],
        test_tensor=spec.FileDescr(source=files["test_input"]),
        sample_tensor=spec.FileDescr(source=files["sample_input"]))]
    outputs = [spec.OutputTensorDescr(
        id=spec.TensorId(OUTPUT_ID), axes=_axes(spec, size, halo["halo"]),
        description="membrane probability (1 = membrane)",
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        test_tensor=spec.FileDescr(source=files["test_output"]),
        sample_tensor=spec.FileDescr(source=files["sample_output"]))]
    citations = [spec.CiteEntry(text=text, doi=spec.Doi(doi)) for text, doi in meta["cite"]]
    config = spec.Config(
        bioimageio=spec.BioimageioConfig(
            reproducibility_tolerance=[spec.ReproducibilityTolerance(**REPRODUCIBILITY)],
            architecture_type=meta["title"][:32],
            architecture_description=meta["architecture_description"],
            modality="electron microscopy", target_structure=["cell membranes"],
            task="semantic segmentation", model_parameter_count=knobs["parameters"]),
        fusionnet_tf=dict(extra_config or {}, halo=halo, architecture=knobs,
                          training_data=meta["training_data"]))
    return spec.ModelDescr(
        name=meta["name"], description=meta["description"],
        covers=[spec.FileDescr(source=files["cover"])],
        authors=[spec.Author(name=name) for name in meta["authors"]],
        cite=citations, license=spec.LicenseId(license), tags=meta["tags"],
        documentation=spec.FileDescr(source=docs_path),
        inputs=inputs, outputs=outputs, weights=_weights(spec, files, formats), config=config)


# === Writing and testing ===

def _one_line(text, limit=400):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def import_bioimageio_core():
    """Import ``bioimageio.core`` and its Keras adapter, keeping ``KERAS_BACKEND`` as it was.

    bioimageio.core 0.11 writes its own default, ``"torch"``, into
    ``os.environ["KERAS_BACKEND"]`` when its Keras adapter is imported; every
    Keras process started from this one afterwards (Dask workers, training
    workers, subprocesses) would then look for PyTorch. The variable is put
    back to its previous value (or removed, if it was unset) right after.

    Returns:
        the ``bioimageio.core`` module.
    """
    previous = os.environ.get("KERAS_BACKEND")
    try:
        import bioimageio.core
        import bioimageio.core.backends.keras_backend  # noqa: F401  (sets KERAS_BACKEND)
    finally:
        if previous is None:
            os.environ.pop("KERAS_BACKEND", None)
        else:
            os.environ["KERAS_BACKEND"] = previous
    return bioimageio.core


# The child process run_package_tests starts; argv: results file, package, formats.
_CHILD_CODE = "from fusionnet_tf.export.bioimageio import _test_in_child; _test_in_child()"
RESULTS_NAME = "bioimageio_test_results.json"


def _test_in_child():
    """Child process: ``bioimageio.core.test_model`` per format, summaries to a JSON file.

    ``sys.argv``: ``[-c, results_path, package_path, format, ...]``. Stops
    after the first format that does not pass.
    """
    from loguru import logger

    logger.disable("bioimageio")
    test_model = import_bioimageio_core().test_model
    results_path, package, *formats = sys.argv[1:]
    results = {}
    for fmt in formats:
        summary = test_model(package, weight_format=fmt, stop_early=True)
        results[fmt] = summary.model_dump(mode="json")
        if summary.status != "passed":
            break
    Path(results_path).write_text(json.dumps(results))


def _run_child(folder, args):
    """Run ``_test_in_child`` with ``args`` in a child process whose working folder is ``folder``.

    bioimageio.core unpacks SavedModel bundles into its current folder, so
    the child runs in ``folder``; this process's working folder and
    environment stay as they are. The child uses this copy of fusionnet_tf
    and the TensorFlow Keras backend the packages declare.

    Raises:
        RuntimeError: the child crashed (its last line of stderr).
    """
    import fusionnet_tf

    root = str(Path(fusionnet_tf.__file__).resolve().parents[1])
    env = dict(os.environ, KERAS_BACKEND="tensorflow",
               PYTHONPATH=os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))))
    done = subprocess.run([sys.executable, "-c", _CHILD_CODE, *args], cwd=folder, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise RuntimeError(f"the bioimage.io test process failed: {_one_line(lines[-1])}")


def run_package_tests(path, weight_formats=None, working_dir=None):
    """Run ``bioimageio.core.test_model`` on a package for each weight format.

    The test runs in a child process (``_run_child``), so bioimageio.core can
    neither change this process's working folder or environment nor leave
    files in it.

    Args:
        path: str or Path of the ``.zip``.
        weight_formats: formats to test. Defaults to all in the package.
        working_dir: working folder of the test process, where bioimageio.core
            unpacks the SavedModel (default: a temporary folder, removed
            afterwards).

    Returns:
        dict weight format -> ``ValidationSummary`` (all passed).

    Raises:
        ValueError: naming the first weight format that failed and why.
        RuntimeError: the test process crashed.
    """
    from bioimageio.spec.summary import ValidationSummary

    path = Path(path).resolve()
    present = package_weight_formats(path)
    formats = list(weight_formats or [fmt for fmt in WEIGHT_FORMATS if fmt in present])
    with contextlib.ExitStack() as stack:
        folder = Path(working_dir or stack.enter_context(tempfile.TemporaryDirectory()))
        results_path = folder.resolve() / RESULTS_NAME
        _run_child(folder, [str(results_path), str(path), *formats])
        results = json.loads(results_path.read_text())
        results_path.unlink()
    summaries = {}
    for fmt in formats:
        summary = ValidationSummary.model_validate(results[fmt])
        if summary.status != "passed":
            raise ValueError(f"bioimage.io test of the {fmt} weights in {path.name} failed: "
                             f"{_one_line(_first_error(summary))}")
        summaries[fmt] = summary
    return summaries


def _first_error(summary):
    for detail in summary.details:
        if detail.status == "failed":
            message = detail.errors[0].msg if detail.errors else ""
            return f"{detail.name}: {message}"
    return summary.status


def package_weight_formats(path):
    """Weight formats declared in a package's ``rdf.yaml`` (no bioimageio needed)."""
    return tuple(read_package_description(path).get("weights") or {})


def export_bioimageio(model, output_dir, name="fusionnet", example=None,
                      weight_formats=WEIGHT_FORMATS, model_card=None, authors=None,
                      license="MIT", test=True, card_extra=None, shipped=False,
                      description=None, training_data=None, tags=(), offsets=None):
    """Write ``<output_dir>/<name>.zip``, a bioimage.io model package (format 0.5).

    A 3D affinity model (input (B, Z, Y, X, 1)) is packaged by
    ``bioimageio3d.export_bioimageio_3d`` (z, y, x axes, one output channel
    per offset, ``offsets`` required); ``shipped`` does not apply to it.

    Args:
        model: ``keras.Model`` (B, H, W, 1) float32 in [0, 1] -> (B, H, W, 1)
            float32 membrane probability.
        output_dir: str or Path (created if missing).
        name: str. File stem, no path separators; the package's display name
            is ``"NAME (ARCHITECTURE)"``. Defaults to ``"fusionnet"``.
        example: (N, H, W) raw EM slices (uint8/uint16) for the halo
            measurement, test tensors and cover. Defaults to the shipped ISBI
            2012 test slices.
        weight_formats: subset of ``WEIGHT_FORMATS`` with ``"keras_v3"``.
        model_card: optional markdown text appended to the documentation.
        authors: list of author names (default: fusionnet-tf contributors for
            the shipped model, else ``UNKNOWN_AUTHORS``).
        license: SPDX license id. Defaults to ``"MIT"``.
        test: bool. Run ``bioimageio.core``'s test for every weight format
            before the package is moved into place. Defaults to True.
        card_extra: optional dict (e.g. source model and its hash) stored in
            the description's ``config.fusionnet_tf``.
        shipped: bool. True only for the shipped ISBI 2012 FusionNet: the
            package then states its training data, ISBI tags, description and
            data citations (``SHIPPED``). Defaults to False.
        description, training_data, tags: what the package says about the
            model (``package_metadata``); by default derived from the model.
        offsets: 3D affinity models only: their (dz, dy, dx) offsets.

    Returns:
        Path of the ``.zip``; the usual JSON model card is written next to it
        (``<name>.model_card.json``).

    Raises:
        ValueError: bad name, weight formats or model, an invalid
            description, or a weight format that fails its test (nothing is
            written then).
        ImportError: without bioimageio.spec (``pip install
            "fusionnet-tf[bioimageio]"``).

    Example:
    >>> export_bioimageio(load_pretrained(), "packages", shipped=True)
    PosixPath('packages/fusionnet.zip')
    >>> export_bioimageio(my_unet, "packages", "my_unet", training_data="my EM stack")
    PosixPath('packages/my_unet.zip')
    """
    from bioimageio.spec import save_bioimageio_package
    from pydantic import ValidationError

    from fusionnet_tf.data import normalize, read_stack
    from fusionnet_tf.export.model_card import (architecture_knobs, build_model_card,
                                                card_path_for, library_versions,
                                                write_model_card)
    from fusionnet_tf.pretrained import example_path

    from fusionnet_tf.export.model_card import is_3d_model

    if is_3d_model(model):
        from fusionnet_tf.export.bioimageio3d import export_bioimageio_3d

        return export_bioimageio_3d(
            model, output_dir, name, offsets, example, weight_formats, model_card, authors,
            license, test, card_extra, shipped=shipped, description=description,
            training_data=training_data, tags=tags)
    if offsets is not None:
        raise ValueError("`offsets` apply to 3D affinity models (input (B, Z, Y, X, 1)); this "
                         "model takes 2D (B, H, W, 1) inputs")
    check_name(name)
    formats = check_weight_formats(weight_formats)
    check_model(model)
    meta = package_metadata(model, name, shipped, description, training_data, tags, authors,
                            formats)
    raw = np.asarray(read_stack(example_path()) if example is None else example)
    if raw.ndim == 2:
        raw = raw[None]
    if raw.ndim != 3 or 0 in raw.shape:
        raise ValueError(f"`example` must be (N, H, W) raw EM slices; received shape {raw.shape}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{name}.zip"
    halo = measure_halo(model, normalize(raw, mode="slice"))
    knobs = dict(architecture_knobs(model), keras=_version("keras"))
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".bioimageio-") as work:
        work = Path(work)
        files = write_package_files(model, work / "files", formats, raw, halo)
        docs = work / "files" / DOCUMENTATION_NAME
        size = input_size(halo["halo"], knobs["input_multiple"])
        test_tile = "a real ISBI 2012 test tile" if example is None else "a real EM tile"
        docs.write_text(documentation(knobs, halo, size, formats, model_card, meta, test_tile))
        extra = dict(card_extra or {}, versions=library_versions(),
                     test_tile=files["test_side"])
        try:
            description = build_description(model, files, formats, halo, docs, meta, license,
                                            extra)
        except ValidationError as exc:
            raise ValueError(f"the bioimage.io description is invalid: {_one_line(exc)}") from None
        with atomic_path(path) as tmp:
            save_bioimageio_package(description, output_path=tmp)
            if test:
                run_package_tests(tmp, formats, working_dir=work)
    card = build_model_card(model, "bioimageio", path.name, tolerance=str(REPRODUCIBILITY),
                            extra=dict(card_extra or {}, halo=halo, weight_formats=list(formats),
                                       tested_with_bioimageio_core=bool(test), bioimageio=meta))
    write_model_card(card, card_path_for(path))
    return path


def _version(package):
    import importlib.metadata

    return importlib.metadata.version(package)
