"""``fusionnet export``: SavedModel (TF Serving layout), LiteRT, ONNX, TensorRT or bioimage.io."""

import re
import sys

from fusionnet_tf.checks import check_choice

HELP = ("Export a trained .keras model to SavedModel/TF Serving, LiteRT, ONNX, TensorRT or a "
        "bioimage.io package.")
FORMATS = ("saved_model", "litert", "onnx", "tensorrt", "bioimageio")
QUANTIZE = ("none", "fp16", "dynamic-int8", "int8")
# --quantize values each format accepts
FORMAT_QUANTIZE = {
    "saved_model": ("none",),
    "onnx": ("none",),
    "litert": QUANTIZE,
    "tensorrt": ("none", "fp16"),
}
# --name for the formats that do not name the artifact after the model
DEFAULT_NAME = "fusionnet"
# names that say nothing about the model: training checkpoints (best.keras,
# latest.keras) and Keras's automatic model names (functional, functional_1, ...)
GENERIC_NAMES = ("best", "latest", "model", "checkpoint", "final", "functional", "sequential")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "export", help=HELP, description=HELP + (
            " Every export writes a JSON model card next to the artifact. saved_model: DIR is "
            "the TF Serving model base, the artifact lands in DIR/NAME/VERSION/. litert: "
            "DIR/NAME[_QUANT].tflite. onnx: DIR/NAME.onnx. tensorrt (NVIDIA machines only): "
            "DIR/NAME_tftrt_PRECISION/ or DIR/NAME_PRECISION.plan. bioimageio: DIR/NAME.zip, a "
            "bioimage.io model package (keras_v3, tensorflow_saved_model_bundle and onnx "
            "weights) validated with bioimageio.spec and tested with bioimageio.core."))
    parser.add_argument("--model", required=True,
                        help="Trained .keras model file, or 'pretrained' for the shipped model.")
    parser.add_argument("--format", required=True, choices=FORMATS, help="Artifact format.")
    parser.add_argument("--output", required=True, metavar="DIR", help="Output folder.")
    parser.add_argument("--name", default=None,
                        help="Model name / file stem (default: bioimageio: the --model file's "
                             "stem, e.g. fusionnet_isbi2012 for 'pretrained', or the Keras "
                             "model's name for a checkpoint called best/latest.keras; other "
                             "formats: fusionnet).")
    parser.add_argument("--version", type=int, default=None,
                        help="saved_model version (default: next free integer in DIR/NAME).")
    parser.add_argument("--quantize", choices=QUANTIZE, default="none",
                        help="litert: none (float32), fp16, dynamic-int8 or int8 (full integer, "
                             "needs --calibration-data); tensorrt: none (FP32) or fp16 "
                             "(default: none).")
    parser.add_argument("--calibration-data", metavar="SPEC", default=None,
                        help="int8 calibration EM images: .tif stack, image folder or "
                             "file.h5:/key, normalized per slice (default: none).")
    parser.add_argument("--calibration-tiles", type=int, default=64,
                        help="Random tiles drawn for int8 calibration (default: 64).")
    parser.add_argument("--tile-size", type=int, default=512,
                        help="Tile side of the whole-image signatures, int8 calibration tiles "
                             "and TensorRT engines (default: 512).")
    parser.add_argument("--overlap", type=int, default=64,
                        help="Tile overlap of the whole-image signatures (default: 64).")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="Tiles per model call in the whole-image signatures; largest "
                             "TensorRT batch (default: 4).")
    parser.add_argument("--trt-route", choices=("tf-trt", "onnx"), default="tf-trt",
                        help="tensorrt: TF-TRT SavedModel or ONNX -> TensorRT engine "
                             "(default: tf-trt).")
    parser.add_argument("--training-config", default=None,
                        help="Training config whose SHA-256 goes into the model card (default: "
                             "config.yaml/resolved_config.yaml next to --model, if any).")
    parser.add_argument("--no-bioimageio-test", action="store_true",
                        help="bioimageio: skip bioimageio.core's test of each weight format "
                             "(default: test before the package is written).")
    parser.add_argument("--description", default=None,
                        help="bioimageio: one-line description of the model (default: one "
                             "naming its architecture, read from the model's layers).")
    parser.add_argument("--training-data", metavar="TEXT", default=None,
                        help="bioimageio: what the model was trained on (default: ISBI 2012 "
                             "for 'pretrained', else not stated).")
    parser.add_argument("--tags", metavar="TAG,TAG", default=None,
                        help="bioimageio: comma-separated tags added to the derived ones "
                             "(EM, membranes, the architecture, the weight formats).")
    parser.add_argument("--author", action="append", default=None, metavar="NAME",
                        help="bioimageio: author of the model; repeat for several (default: "
                             "fusionnet-tf contributors for 'pretrained', else unknown).")
    parser.set_defaults(run=run)


def check_args(args):
    """Raise ValueError for option combinations that cannot work."""
    exporter(args.format)
    allowed = FORMAT_QUANTIZE.get(args.format, ("none",))
    if args.quantize not in allowed:
        raise ValueError(f"--quantize {args.quantize} is not available for --format "
                         f"{args.format}; choose one of {', '.join(allowed)}")
    if args.quantize == "int8" and not args.calibration_data:
        raise ValueError("--quantize int8 needs --calibration-data SPEC (EM images to draw "
                         "calibration tiles from)")
    if args.version is not None and args.format != "saved_model":
        raise ValueError(f"--version applies to --format saved_model only; received --format "
                         f"{args.format}")
    for option in ("no_bioimageio_test", "description", "training_data", "tags", "author"):
        if getattr(args, option) not in (None, False) and args.format != "bioimageio":
            raise ValueError(f"--{option.replace('_', '-')} applies to --format bioimageio only; "
                             f"received --format {args.format}")
    for option in ("tile_size", "batch_size", "calibration_tiles"):
        if getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1; received "
                             f"{getattr(args, option)}")


def _is_generic(name):
    """True for a name like ``best``, ``latest`` or ``functional_3``."""
    return re.sub(r"_\d+$", "", name.lower()) in GENERIC_NAMES


def default_name(export_format, model, model_path):
    """The artifact name when ``--name`` is not given.

    A bioimage.io package is named after the model, since it travels on its
    own (model zoo, Fiji): the ``.keras`` file's stem (``fusionnet_isbi2012``
    for the shipped model), or the Keras model's name (e.g. ``fusionnet``)
    when the stem is a checkpoint name such as ``best``. Characters a file
    stem may not hold become ``_``. Other formats keep ``"fusionnet"``, the
    TF Serving model name the serving docs use.

    Args:
        export_format: the ``--format`` value.
        model: the loaded ``keras.Model``.
        model_path: ``pathlib.Path`` of the ``.keras``/``.h5`` file.

    Returns:
        str. A file stem of letters, digits, ``.``, ``_`` and ``-``.
    """
    if export_format != "bioimageio":
        return DEFAULT_NAME
    for candidate in (model_path.stem, model.name):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(candidate)).strip("._-")
        if name and not _is_generic(name):
            return name
    return DEFAULT_NAME


def load_keras_model(spec):
    """A ``keras.Model`` from a ``.keras``/``.h5`` file or ``"pretrained"``."""
    from pathlib import Path

    import keras

    from fusionnet_tf.pretrained import pretrained_path

    path = pretrained_path() if spec == "pretrained" else Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--model not found: {path}")
    if path.is_dir() or path.suffix.lower() not in (".keras", ".h5"):
        raise ValueError(f"--model must be a .keras (or .h5) file saved by Keras; received {spec}")
    return keras.saving.load_model(path, compile=False), path


def calibration_tiles(spec, tile_size, count):
    """Normalized random tiles from the images at ``spec`` for int8 calibration."""
    from fusionnet_tf.data import normalize, read_stack
    from fusionnet_tf.export.calibration import representative_tiles

    return representative_tiles(normalize(read_stack(spec), mode="slice"), tile_size, count)


def card_extra(args, model_path):
    """Provenance for the model card: source model, its hash, training config."""
    from fusionnet_tf.export.model_card import file_sha256, find_training_config

    config = args.training_config or find_training_config(model_path)
    extra = {"source_model": str(model_path), "source_model_sha256": file_sha256(model_path)}
    if config:
        extra["training_config"] = str(config)
        extra["training_config_sha256"] = file_sha256(config)
    return extra


def export_saved_model(args, model, extra):
    from fusionnet_tf.export.saved_model import export_saved_model

    return export_saved_model(model, args.output, args.name, args.version, args.tile_size,
                              args.overlap, args.batch_size, card_extra=extra,
                              offsets=extra.get("offsets"))


def export_onnx(args, model, extra):
    from fusionnet_tf.export.onnx import export_onnx

    return export_onnx(model, args.output, args.name, card_extra=extra,
                       offsets=extra.get("offsets"))


def check_3d_model(args):
    """The offsets of a 3D --model (None for 2D), checked before anything is loaded.

    A 3D model read from a ``.keras`` file (its config only) with a 2D-only
    --format, or without its ``MODEL.offsets.json``, is a one-line error.
    """
    from pathlib import Path

    from fusionnet_tf.cli import CommandError
    from fusionnet_tf.export.model_card import FORMATS_3D, refuse_3d_message
    from fusionnet_tf.inference.predictor import model_file_spatial_dims

    path = Path(args.model)
    if args.model == "pretrained" or not path.is_file() or model_file_spatial_dims(path) != 3:
        return None
    if args.format not in FORMATS_3D:
        raise CommandError(f"--model {args.model}: {refuse_3d_message(args.format)}")
    return model_offsets(path)


def model_offsets(model_path):
    """The offsets in a 3D model's MODEL.offsets.json.

    Raises:
        ValueError: no sidecar (every 3D export carries its offsets).
    """
    from fusionnet_tf.inference.predictor import model_offsets_path, read_model_offsets

    offsets = read_model_offsets(model_path)
    if offsets is None:
        raise ValueError(f"--model {model_path} is a 3D affinity model without its offsets "
                         f"file {model_offsets_path(model_path)} ({{\"offsets\": [[dz, dy, "
                         "dx], ...]}, written by training); exports carry the offsets")
    return offsets


def export_litert(args, model, extra):
    from fusionnet_tf.export.litert import export_litert

    data = None
    if args.quantize == "int8":
        data = calibration_tiles(args.calibration_data, args.tile_size, args.calibration_tiles)
    return export_litert(model, args.output, args.name, args.quantize, data, card_extra=extra)


def export_tensorrt(args, model, extra):
    from fusionnet_tf.export.tensorrt import export_tensorrt

    precision = "fp16" if args.quantize == "fp16" else "fp32"
    return export_tensorrt(model, args.output, args.name, args.trt_route, precision,
                           args.tile_size, args.batch_size, card_extra=extra)


def export_bioimageio(args, model, extra):
    """DIR/NAME.zip; only the shipped model's package states its ISBI 2012 training (and
    carries MODEL_CARD.md); the rest is read from the model and the options."""
    from pathlib import Path

    from fusionnet_tf.export.bioimageio import export_bioimageio
    from fusionnet_tf.pretrained import PRETRAINED_FILE

    model_card = None
    card = Path(__file__).resolve().parents[2] / "MODEL_CARD.md"  # in a source checkout
    shipped = Path(extra["source_model"]).resolve() == PRETRAINED_FILE
    if shipped and card.is_file():
        model_card = card.read_text()
    tags = [tag.strip() for tag in (args.tags or "").split(",") if tag.strip()]
    return export_bioimageio(model, args.output, args.name, model_card=model_card,
                             test=not args.no_bioimageio_test, card_extra=extra,
                             shipped=shipped, description=args.description,
                             training_data=args.training_data, tags=tags, authors=args.author,
                             offsets=extra.get("offsets"))


# --format -> function(args, model, card_extra) returning the artifact path
EXPORTERS = {
    "saved_model": export_saved_model,
    "onnx": export_onnx,
    "litert": export_litert,
    "tensorrt": export_tensorrt,
    "bioimageio": export_bioimageio,
}


def exporter(export_format):
    """The export function of ``export_format``.

    Raises:
        ValueError: a format without an exporter (never falls back to another one).
    """
    return EXPORTERS[check_choice("--format", export_format, EXPORTERS)]


def export(args, model, extra):
    """Dispatch to the format's export function; returns the artifact path."""
    return exporter(args.format)(args, model, extra)


def run(args):
    from tqdm import tqdm

    from fusionnet_tf.cli import CommandError
    from fusionnet_tf.export.model_card import is_3d_model

    check_args(args)
    offsets = check_3d_model(args)
    if args.format == "tensorrt":
        from fusionnet_tf.export.tensorrt import tensorrt_missing_reason

        reason = tensorrt_missing_reason(args.trt_route)
        if reason:
            raise CommandError(reason)
    if args.training_config:
        from pathlib import Path

        if not Path(args.training_config).is_file():
            raise FileNotFoundError(f"--training-config not found: {args.training_config}")
    with tqdm(total=2, desc=f"export {args.format}", file=sys.stderr, unit="step") as bar:
        model, model_path = load_keras_model(args.model)
        if args.name is None:
            args.name = default_name(args.format, model, model_path)
        bar.update()
        extra = card_extra(args, model_path)
        if offsets is None and is_3d_model(model):  # a 3D model whose file did not say so
            offsets = model_offsets(model_path)
        if offsets is not None:
            extra["offsets"] = [list(o) for o in offsets]
        path = export(args, model, extra)
        bar.update()
    print(path)
    return 0
