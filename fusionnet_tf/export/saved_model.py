"""SavedModel export in TF Serving's model base layout.

``<base>/<name>/<version>/`` holds one SavedModel per integer version; a new
export takes the next free version and never overwrites one (TF Serving
serves the highest version of ``--model_base_path=<base>/<name>``).

Signatures (one ``tf.function`` per input kind, each with explicit
``TensorSpec``s, see ``FusionNetExportModule``):

- ``serving_default``: input ``image`` float32 (batch, H, W, 1) in [0, 1]
  (per-slice min-max normalized), H and W multiples of ``2**depth``; output
  ``membrane_probability`` float32 (batch, H, W, 1). No preprocessing, so this
  is also the graph the LiteRT/ONNX converters quantize.
- ``whole_image``: input ``image`` uint8 (N, H, W) raw slices of any size;
  output ``membrane_probability`` float32 (N, H, W). Normalization, padding,
  tiling and Gaussian blending run in the graph (``whole_image``).
- ``whole_image_png``: input ``image_bytes`` string (N,), each an encoded 8-bit
  grayscale PNG (JPEG/BMP/GIF also decode); in JSON send TF Serving's
  ``{"b64": "<base64 of the file bytes>"}``. Output as ``whole_image``; all
  images in one request must have the same size.

A 3D affinity model (Keras input (B, Z, Y, X, 1), ``FusionNet3DExportModule``)
has one signature, ``serving_default``: input ``image`` float32 (batch, Z, Y,
X, 1) in [0, 1], Z, Y and X multiples of the model's per-axis input multiple;
output ``affinities`` float32 (batch, Z, Y, X, C), channel c the affinity along
``offsets[c]``. Its offsets are written beside the version folder
(``<base>/<name>/<version>.offsets.json``, where ``Predictor`` reads them) and
into the model card.
"""

import os
import re
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from fusionnet_tf.checks import check_int
from fusionnet_tf.export import whole_image
from fusionnet_tf.export.model_card import (  # noqa: F401  (FORMATS_3D, ... re-exported)
    AFFINITY_OUTPUT_NAME, FORMATS_3D, build_model_card, check_2d_model, input_multiples_3d,
    is_3d_model, offsets_field, refuse_3d_message, write_model_card)
from fusionnet_tf.inference import tiling
# the card inside a version folder, where the SavedModel backend reads input_multiple_zyx
from fusionnet_tf.inference.backends.saved_model import MODEL_CARD_NAME
from fusionnet_tf.models import input_multiple, model_depth

OUTPUT_NAME = "membrane_probability"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class FusionNetExportModule:
    """The serving functions of a membrane model, one per input kind.

    Args:
        model: ``keras.Model`` mapping (B, H, W, 1) float32 in [0, 1] to
            (B, H, W, 1) float32 membrane probability.
        tile_size: int. Tile side of the whole-image signatures; a multiple of
            ``2**depth``. Defaults to 512.
        overlap: int. Minimum tile overlap of the whole-image signatures.
            Defaults to 64.
        batch_size: int. Tiles per model call in the whole-image signatures.
            Defaults to 4.
        blending: ``"gaussian"``, ``"cosine"`` or ``"constant"``; the
            ``tiling.blend_weights`` map. Defaults to ``"gaussian"``.

    Raises:
        ValueError: for a tile size, overlap or batch size that does not fit
            the model.

    Example:
    >>> module = FusionNetExportModule(model, tile_size=256, overlap=32)
    >>> module.serve_whole_image(tf.zeros((1, 300, 200), tf.uint8))
    """

    def __init__(self, model, tile_size=512, overlap=64, batch_size=4, blending="gaussian"):
        self.model = model
        self.depth = model_depth(model)
        self.align = input_multiple(model)
        self.tile_size, self.overlap, _ = tiling.check_tile_args(tile_size, overlap, self.align)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.blending = blending
        self.weights = np.array(tiling.blend_weights(self.tile_size, blending))

    # === Input specs ===
    def float_spec(self):
        return tf.TensorSpec([None, None, None, 1], tf.float32, name="image")

    def uint8_spec(self):
        return tf.TensorSpec([None, None, None], tf.uint8, name="image")

    def encoded_spec(self):
        return tf.TensorSpec([None], tf.string, name="image_bytes")

    # === Serving functions ===
    def _check_multiple(self, image):
        factor = self.align
        message = (f"image height and width must be multiples of 2**depth = {factor}; "
                   "pad or crop, or use the whole_image signature")
        shape = tf.shape(image)
        checks = [tf.debugging.assert_equal(shape[1] % factor, 0, message=message),
                  tf.debugging.assert_equal(shape[2] % factor, 0, message=message)]
        with tf.control_dependencies(checks):
            return tf.identity(image)

    def serve_float(self, image):
        """(B, H, W, 1) float32 in [0, 1] -> {"membrane_probability": (B, H, W, 1) float32}."""
        image = self._check_multiple(image)
        return {OUTPUT_NAME: tf.cast(self.model(image, training=False), tf.float32)}

    def _predict_tiles(self, tiles):
        probability = self.model(tiles[..., None], training=False)
        return tf.cast(probability[..., 0], tf.float32)

    def serve_whole_image(self, image):
        """(N, H, W) uint8 raw slices -> {"membrane_probability": (N, H, W) float32}."""
        probability = whole_image.predict_stack(image, self._predict_tiles, self.weights,
                                                self.overlap, self.align, self.batch_size)
        return {OUTPUT_NAME: probability}

    def serve_encoded(self, image_bytes):
        """(N,) string of encoded 8-bit grayscale images -> {"membrane_probability": (N, H, W)}."""
        def decode(data):
            decoded = tf.io.decode_image(data, channels=1, dtype=tf.uint8,
                                         expand_animations=False)
            return decoded[..., 0]

        images = tf.map_fn(decode, image_bytes, fn_output_signature=tf.TensorSpec(
            [None, None], tf.uint8))
        return self.serve_whole_image(images)

    def signatures(self):
        """Signature name -> (function, [TensorSpec]) for every input kind."""
        return {
            "serving_default": (self.serve_float, [self.float_spec()]),
            "whole_image": (self.serve_whole_image, [self.uint8_spec()]),
            "whole_image_png": (self.serve_encoded, [self.encoded_spec()]),
        }

    def signature_summary(self):
        """JSON-ready description of the signatures for the model card."""
        return {
            "serving_default": {"inputs": {"image": "float32 [batch, H, W, 1] in [0, 1]; "
                                                    f"H, W multiples of {self.align}"},
                                "outputs": {OUTPUT_NAME: "float32 [batch, H, W, 1]"}},
            "whole_image": {"inputs": {"image": "uint8 [N, H, W], any H, W"},
                            "outputs": {OUTPUT_NAME: "float32 [N, H, W]"}},
            "whole_image_png": {"inputs": {"image_bytes": "string [N]: encoded 8-bit "
                                                          "grayscale PNG, JSON {\"b64\": ...}"},
                                "outputs": {OUTPUT_NAME: "float32 [N, H, W]"}},
            "whole_image_tiling": {"tile_size": self.tile_size, "overlap": self.overlap,
                                   "align": self.align, "batch_size": self.batch_size,
                                   "blending": self.blending, "tta": 1},
        }

    def archive(self):
        """A ``keras.export.ExportArchive`` with the model and all signatures."""
        archive = keras.export.ExportArchive()
        archive.track(self.model)
        for name, (fn, specs) in self.signatures().items():
            archive.add_endpoint(name, fn, input_signature=specs)
        return archive


class FusionNet3DExportModule:
    """The serving function of a 3D affinity model: one 5D ``serving_default``.

    The whole-image signatures of ``FusionNetExportModule`` are 2D only (they
    tile (N, H, W) slices); a volume is tiled by the client (``Predictor``).

    Args:
        model: ``keras.Model`` mapping (B, Z, Y, X, 1) float32 in [0, 1] to
            (B, Z, Y, X, C) float32 affinities.
        offsets: C (dz, dy, dx) int triples, or None when unknown.

    Example:
    >>> module = FusionNet3DExportModule(build_fusionnet3d(base_filters=2, depth=2))
    >>> module.serve_float(tf.zeros((1, 2, 16, 16, 1)))["affinities"].shape
    TensorShape([1, 2, 16, 16, 3])
    """

    def __init__(self, model, offsets=None):
        from fusionnet_tf.inference.affinity_tta import check_offsets

        self.model = model
        self.channels = int(model.output_shape[-1])
        self.offsets = None if offsets is None else check_offsets(offsets, self.channels)
        self.multiples = input_multiples_3d(model)

    def float_spec(self):
        return tf.TensorSpec([None, None, None, None, 1], tf.float32, name="image")

    def _check_multiples(self, image):
        zm, ym, xm = self.multiples
        message = f"image Z, Y and X must be multiples of {zm}, {ym}, {xm} (pooling); pad or crop"
        shape = tf.shape(image)
        checks = [tf.debugging.assert_equal(shape[axis + 1] % multiple, 0, message=message)
                  for axis, multiple in enumerate(self.multiples)]
        with tf.control_dependencies(checks):
            return tf.identity(image)

    def serve_float(self, image):
        """(B, Z, Y, X, 1) float32 in [0, 1] -> {"affinities": (B, Z, Y, X, C) float32}."""
        image = self._check_multiples(image)
        return {AFFINITY_OUTPUT_NAME: tf.cast(self.model(image, training=False), tf.float32)}

    def signatures(self):
        """Signature name -> (function, [TensorSpec])."""
        return {"serving_default": (self.serve_float, [self.float_spec()])}

    def signature_summary(self):
        """JSON-ready description of the signature for the model card."""
        zm, ym, xm = self.multiples
        return {"serving_default": {
            "inputs": {"image": f"float32 [batch, Z, Y, X, 1] in [0, 1]; Z, Y, X multiples "
                                f"of {zm}, {ym}, {xm}"},
            "outputs": {AFFINITY_OUTPUT_NAME: f"float32 [batch, Z, Y, X, {self.channels}] "
                                              "affinities, channel c along offsets[c]"}},
            "offsets": None if self.offsets is None else [list(o) for o in self.offsets],
            "input_multiple": list(self.multiples)}

    archive = FusionNetExportModule.archive


def write_offsets_sidecar(path, offsets):
    """Write ``{"offsets": [[dz, dy, dx], ...]}`` to ``path`` atomically; return the path.

    The file ``Predictor`` reads beside a model (``model_offsets_path``).
    """
    import json

    from fusionnet_tf.io.outputs import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"offsets": [[int(v) for v in o] for o in offsets]}) + "\n")
    return path


def list_versions(model_dir):
    """Sorted integer versions present in ``model_dir`` (TF Serving layout)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir):
    """The next free integer version in ``model_dir``: 1 + the highest, or 1."""
    versions = list_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def _check_name(name):
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            "`name` must be a folder name of letters, digits, '.', '_' or '-'; "
            f"received name={name!r}")
    return name


def _check_version(version, model_dir):
    if version is None:
        return next_version(model_dir)
    check_int("version", version, 1)
    if (Path(model_dir) / str(version)).exists():
        raise FileExistsError(
            f"version {version} already exists: {Path(model_dir) / str(version)}; "
            "exports never overwrite a version, omit --version to use the next free one")
    return version


def export_saved_model(model, base_dir, name="fusionnet", version=None, tile_size=512,
                       overlap=64, batch_size=4, blending="gaussian", card_extra=None,
                       offsets=None):
    """Export ``model`` as ``<base_dir>/<name>/<version>/`` for TF Serving.

    The SavedModel is written to a hidden temporary folder next to the final
    one and renamed when complete, so TF Serving never sees a half-written
    version. ``model_card.json`` is written inside the version folder.

    Args:
        model: ``keras.Model`` (B, H, W, 1) float32 -> (B, H, W, 1) float32.
        base_dir: str or Path. Model base folder (created if missing).
        name: str. Model name (subfolder). Defaults to ``"fusionnet"``.
        version: int >= 1 or None for the next free version.
        tile_size, overlap, batch_size, blending: the whole-image signatures'
            tiling (see ``FusionNetExportModule``).
        card_extra: optional dict merged into the model card (e.g. the
            training config hash, source model path).
        offsets: 3D affinity models (5D input) only: their C (dz, dy, dx)
            offsets, written to ``<base_dir>/<name>/<version>.offsets.json``
            and the model card (None: unknown, no sidecar). The whole-image
            arguments do not apply to them (see ``FusionNet3DExportModule``).

    Returns:
        Path of the version folder.

    Raises:
        ValueError: bad name, version or tiling arguments.
        FileExistsError: if ``version`` already exists.

    Example:
    >>> export_saved_model(model, "models", name="fusionnet")
    PosixPath('models/fusionnet/1')
    """
    if is_3d_model(model):
        module = FusionNet3DExportModule(model, offsets)
    elif offsets is not None:
        raise ValueError("`offsets` apply to 3D affinity models (input (B, Z, Y, X, 1)); this "
                         "model takes 2D (B, H, W, 1) inputs")
    else:
        module = FusionNetExportModule(model, tile_size, overlap, batch_size, blending)
    model_dir = Path(base_dir) / _check_name(name)
    model_dir.mkdir(parents=True, exist_ok=True)
    version = _check_version(version, model_dir)
    final = model_dir / str(version)
    tmp = model_dir / f".tmp-{version}-{os.getpid()}-{time.time_ns()}"
    try:
        module.archive().write_out(str(tmp), verbose=False)
        card = build_model_card(model, "saved_model", artifact=final.name,
                                signatures=module.signature_summary(),
                                extra=dict(card_extra or {}, name=name, version=version,
                                           **offsets_field(module)))
        write_model_card(card, tmp / MODEL_CARD_NAME)
        if final.exists():
            raise FileExistsError(f"version {version} appeared while exporting: {final}")
        if getattr(module, "offsets", None) is not None:  # beside the version, where Predictor looks
            write_offsets_sidecar(model_dir / f"{version}.offsets.json", module.offsets)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def export_plain_saved_model(model, path, endpoints=("serving_default",)):
    """Write a SavedModel with only ``serving_default`` (input for converters).

    Unlike the served ``serving_default``, it has no shape assertions, so the
    LiteRT and TF-TRT converters see nothing but the model.

    Args:
        model: ``keras.Model``.
        path: str or Path of a folder that must not exist yet.
        endpoints: names of the endpoints, each the same function returning
            ``{"membrane_probability": (B, H, W, 1) float32}``. Defaults to
            ``("serving_default",)``; bioimage.io bundles add ``"serve"``,
            the endpoint ``keras.layers.TFSMLayer`` calls by default. A 3D
            model's endpoints take (B, Z, Y, X, 1) and return
            ``{"affinities": (B, Z, Y, X, C)}``.

    Returns:
        Path of the SavedModel folder.
    """
    output_name = AFFINITY_OUTPUT_NAME if is_3d_model(model) else OUTPUT_NAME
    rank = len(model.input_shape)

    def serve(image):
        return {output_name: tf.cast(model(image, training=False), tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    for endpoint in endpoints:
        archive.add_endpoint(endpoint, serve, input_signature=[
            tf.TensorSpec([None] * (rank - 1) + [1], tf.float32, name="image")])
    archive.write_out(str(path), verbose=False)
    return Path(path)
