"""``fusionnet predict``: membrane probability maps for an image or a stack.

Reads INPUT (TIFF stack, image, folder of slices or ``file.h5:/key``),
normalizes each slice, predicts with overlap tiles and test-time augmentation
and writes OUTPUT atomically (``.tif``, ``.h5[:/key]``, ``.png`` or a folder
of PNGs). An OUTPUT inside the HDF5 file that holds INPUT is added to it; the
input dataset itself is never overwritten. The model is ``--model PATH``, a TF
Serving endpoint (``--serving-url``) or, by default, the shipped pretrained
FusionNet.
"""

import dataclasses
from pathlib import Path

from fusionnet_tf.io.outputs import check_not_input, same_path, stored_in

HELP = "Predict membrane probability maps (seamless tiles, 8-way TTA)."


def add_parser(subparsers):
    """Register ``predict``; argparse only, no TensorFlow import."""
    parser = subparsers.add_parser(
        "predict", help=HELP, description=HELP,
        epilog="Example: fusionnet predict test-volume.tif -o pred.tif --tta 8",
    )
    parser.add_argument("input", metavar="INPUT",
                        help="TIFF stack, single image, folder of 2D slices or file.h5:/key.")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                        help="Output .tif/.tiff, .h5[:/key] (key default: prediction), "
                             ".png (one slice) or a folder of PNGs (new, empty or an earlier "
                             "PNG output, which is refreshed; any other folder is refused); "
                             "with a 3D affinity model .tif/.tiff, .h5[:/key] (key default: "
                             "affinities) or .zarr, (C, Z, Y, X) float32 with the offsets in "
                             "the metadata. "
                             "Files are replaced atomically; in an existing HDF5 file only "
                             "the dataset KEY is replaced, other datasets are kept (but "
                             "never the INPUT dataset).")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH|NAME", default=None,
                        help="A shipped model by name (isbi2012: 2D membranes; snemi3d: 3D "
                             "affinities, see MODEL_CARD.md), a .keras file, a bioimage.io "
                             "package .zip (its keras_v3 weights), an .onnx or .tflite file from "
                             "'fusionnet export', or a SavedModel folder (default: isbi2012).")
    source.add_argument("--serving-url", metavar="URL", default=None,
                        help="Predict through a TF Serving REST endpoint, "
                             "http://HOST:PORT/v1/models/NAME (default: not used).")
    add_tiling_arguments(parser)
    parser.add_argument("--isbi", action="store_true",
                        help="Write 1 - membrane probability (high = cell interior), the ISBI "
                             "2012 submission convention (default: membrane probability).")
    from fusionnet_tf.choices import DTYPES

    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="Output dtype for TIFF/HDF5; uint8 is probability x 255 "
                             "(default: float32; PNG is always uint8).")
    parser.add_argument("--overlay", metavar="PATH", default=None,
                        help="Also write image + predicted membrane overlays: a .png (one "
                             "slice) or a folder of PNGs (as for OUTPUT) (default: none).")
    parser.add_argument("--quiet", action="store_true",
                        help="No progress bar (default: progress bar on stderr).")
    parser.add_argument("--segment", metavar="LABELS", default=None,
                        help="Also segment neurons from the prediction, as 'fusionnet segment' "
                             "does, and write the label image here: .tif (uint32), .h5[:/key] "
                             "or .zarr (default: no segmentation).")
    parser.add_argument("--segment-overlay", metavar="DIR", default=None,
                        help="With --segment: also write the segments in random colours over "
                             "the image, one PNG per slice, into this folder (default: none).")
    from fusionnet_tf.cli.segment import add_segment_arguments
    from fusionnet_tf.cli.slices import add_slices_argument

    add_slices_argument(parser, "INPUT (the outputs hold only those)")
    add_segment_arguments(parser)
    from fusionnet_tf.io import ngff

    ngff.add_level_argument(parser)
    ngff.add_arguments(parser, labels=True)
    parser.set_defaults(run=run)


def add_tiling_arguments(parser):
    """The prediction options shared by ``predict`` and ``predict-volume``.

    One option per ``PredictOptions`` field (``--tile-size``, ``--overlap``,
    ``--tta``, ``--batch-size``, ``--blending``, ``--align``, ``--engine``,
    ``--precision``, ``--normalization`` and, in the 3D group, ``--tile-z``
    and ``--overlap-z``), generated from the dataclass with its defaults and
    help, plus ``--offsets``, so both commands normalize, tile and blend the
    same way as the Python API.
    """
    from fusionnet_tf import predict_options

    groups = predict_options.add_arguments(parser)
    groups[predict_options.THREE_D_GROUP].add_argument(
        "--offsets", default=None, metavar="JSON",
        help="The model's offsets, one (dz, dy, dx) per output channel, e.g. "
             "'[[-1,0,0],[0,-1,0],[0,0,-1]]' (default: read from MODEL.offsets.json "
             "beside the model, e.g. best.offsets.json for best.keras).")


def parse_offsets(text):
    """``--offsets`` JSON -> list of (dz, dy, dx) tuples; None for None.

    Raises:
        ValueError: not JSON, or not a list of int triples (one line).
    """
    import json

    from fusionnet_tf.inference.affinity_tta import check_offsets

    if text is None:
        return None
    try:
        return check_offsets(json.loads(text))
    except ValueError as exc:
        raise ValueError(f"--offsets {text}: {exc}") from None


def check_outputs_not_input(input_spec, output, overlay=None):
    """Refuse outputs that would overwrite INPUT (or each other), before predicting.

    Writing into the HDF5 file that holds the INPUT dataset is allowed (the
    file's other datasets are kept); writing to the INPUT dataset itself, or
    any other output over the INPUT file, is refused.

    Raises:
        ValueError: naming the option, the output and INPUT.
    """
    check_not_input(output, input_spec)
    if overlay is None:
        return
    check_not_input(overlay, input_spec, "--overlay")
    if same_path(stored_in(output)[0], Path(overlay)):
        raise ValueError(f"--overlay {overlay} is the same path as --output {output}; "
                         f"choose another path")


def resolve_model(args):
    """The model or callable the Predictor runs, from --model / --serving-url."""
    if args.serving_url:
        return serving_client(args.serving_url)
    if args.model:
        from fusionnet_tf.inference import load_model

        return load_model(args.model)
    from fusionnet_tf.pretrained import load_pretrained

    return load_pretrained()


def serving_client(url):
    """A ``ServingClient`` for ``--serving-url``, checked to answer (no TensorFlow needed).

    Raises:
        CommandError: the endpoint cannot be reached or answers an error (one line).
    """
    from fusionnet_tf.cli import CommandError
    from fusionnet_tf.export.rest_client import ServingClient, ServingError

    client = ServingClient(url)
    try:
        client.status()
    except ServingError as exc:
        raise CommandError(f"--serving-url {url}: {exc}") from None
    return client


def check_tiling_arguments(args):
    """The ``PredictOptions`` of the parsed options, checked before anything is loaded.

    Returns:
        ``PredictOptions``.

    Raises:
        ValueError: a bad value, naming its option (``--overlap`` not below
            ``--tile-size``, ``--batch-size`` < 1, ...).
    """
    from fusionnet_tf.predict_options import from_args

    return from_args(args)


# a tile may exceed the slices (it is padded) up to this side, the default --tile-size
LARGEST_TILE_ALWAYS_ALLOWED = 512
# tiles are refused beyond the slice side rounded up to this (more than any model's multiple)
TILE_ROUNDING = 256


def check_tile_size(tile, height, width, tta, option="--tile-size"):
    """Refuse a tile far larger than the slices need, with its memory cost, before allocating.

    A tile larger than a slice only adds padding: one tile of side
    ``max(height, width)`` (rounded up to the model's multiple) covers it.
    Tiles up to ``max(512, that side rounded up to 256)`` are allowed.

    Raises:
        ValueError: naming ``option``, the largest useful size and the memory
            the tile would need (blend weights, one call's inputs and outputs).
    """
    side = max(height, width)
    limit = max(LARGEST_TILE_ALWAYS_ALLOWED, -(-side // TILE_ROUNDING) * TILE_ROUNDING)
    if tile <= limit:
        return
    needed = tile * tile * (8 + 2 * 4 * tta)
    raise ValueError(f"{option} {tile} is larger than the {height}x{width} slices need (at most "
                     f"{limit}: one tile covers a slice); it would need at least "
                     f"{_size_text(needed)} of memory before the network runs")


def _size_text(size):
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024


def run(args):
    """Predict INPUT and write OUTPUT. Returns 0.

    Every check that needs no model (options, paths, the input's shape, a
    serving endpoint) runs before TensorFlow is imported.
    """
    import sys

    from fusionnet_tf.cli.slices import select_slices
    from fusionnet_tf.data import normalize, read_stack
    from fusionnet_tf.data.normalize import check_finite
    from fusionnet_tf.inference.writers import (check_prediction_output, write_overlays,
                                                write_prediction)

    from fusionnet_tf.pretrained import resolve_model_spec

    from fusionnet_tf.io import ome_zarr

    options = check_tiling_arguments(args)
    args.model, args.model_name = resolve_model_spec(args.model)  # a name -> its weights
    args.input = ome_zarr.level_spec(args.input, args.level)
    check_outputs_not_input(args.input, args.output, args.overlay)
    from fusionnet_tf.io.spec import spec_kind

    affinity_store = spec_kind(args.output) == "zarr"
    ome_plan = ome_zarr.check_cli_options(
        args, args.output, args.input,
        "affinities" if _is_affinity_model_file(args) else "probability", "predict")
    if ome_plan is not None:
        ome_zarr.check_output(args.output, "predict", "--output")
        affinity_store = False
    elif affinity_store:  # a .zarr output is for affinities (refused below for a 2D model)
        from fusionnet_tf.data.affinity_io import check_affinity_output

        check_affinity_output(args.output)
    else:
        check_prediction_output(args.output)
    if args.overlay:
        check_prediction_output(args.overlay, "--overlay")
    offsets = parse_offsets(args.offsets)
    params = args.segment_params = _check_segment_output(args)
    raw = check_finite(select_slices(read_stack(args.input), args.slices), f"INPUT {args.input}")
    check_tile_size(args.tile_size, raw.shape[1], raw.shape[2], args.tta)
    for option, spec in (("--output", args.output), ("--overlay", args.overlay),
                         ("--segment-overlay", args.segment_overlay)):
        if spec and str(spec).lower().endswith(".png") and len(raw) > 1:
            raise ValueError(f"{option} {spec}: a .png holds one slice but INPUT has "
                             f"{len(raw)}; give a folder or a .tif")
    from fusionnet_tf.inference.predictor import check_precision_applies, model_spatial_dims

    check_precision_applies(args.precision, args.serving_url or args.model)
    model = resolve_model(args) if args.serving_url else None  # reachable? (no TensorFlow)
    from fusionnet_tf.inference import Predictor

    images = normalize(raw, mode=options.normalization)
    model = model or resolve_model(args)
    if model_spatial_dims(model) == 3:
        return predict_affinities(args, model, images, offsets, options)
    refuse_affinity_options(args)
    if affinity_store:
        check_prediction_output(args.output)  # names the formats a membrane map can take
    if ome_plan is not None and ome_plan.kind != "probability":
        ome_plan = dataclasses.replace(ome_plan, kind="probability")
    predictor = Predictor(model, options, progress=not args.quiet)
    membrane = predictor.predict(images)
    variant = predictor.variant
    metadata = {
        "input": str(args.input),
        "model": args.model_name or args.model or args.serving_url or "pretrained",
        "tile": args.tile_size, "overlap": args.overlap, "tta": args.tta,
        "blending": args.blending, "normalization": options.normalization,
        "precision": variant["precision"], "engine": variant["engine"],
    }
    if args.slices:
        metadata["slices"] = args.slices
    if ome_plan is not None:
        from fusionnet_tf.inference.writers import to_isbi, to_uint8

        stored = to_isbi(membrane) if args.isbi else membrane
        ome_zarr.write_ome_zarr(args.output, to_uint8(stored) if args.dtype == "uint8"
                                else stored.astype("float32"), ome_plan)
    else:
        write_prediction(args.output, membrane, dtype=args.dtype, isbi=args.isbi,
                         metadata=metadata)
    if args.overlay:
        write_overlays(args.overlay, images, membrane)
    what = "1 - membrane probability (ISBI)" if args.isbi else "membrane probability"
    print(f"wrote {args.output}: {membrane.shape} {args.dtype} {what}", file=sys.stderr)
    if args.segment:
        from fusionnet_tf.cli.segment import segment_and_write

        segment_and_write(membrane, args.segment, args, params, args.input, images=images,
                          overlay=args.segment_overlay)
    return 0


def refuse_affinity_options(args):
    """A 2D model: the 3D-only options given on the command line are an error (one line)."""
    from fusionnet_tf.predict_options import three_d_flags

    typed = three_d_flags(args) + (["--offsets"] if args.offsets is not None else [])
    if typed:
        raise ValueError(f"{typed[0]} applies to 3D affinity models (input (B, Z, Y, X, 1)); "
                         f"the model takes 2D images")


def predict_affinities(args, model, images, offsets, options):
    """``fusionnet predict`` with a 3D affinity model: (C, Z, Y, X) float32 affinities.

    Everything is checked before predicting: options that only apply to
    membrane maps, the output, a single 2D section, the offsets (``--offsets``
    or ``MODEL.offsets.json``; they must match the model's channels) and the
    Predictor settings.
    """
    import sys

    from fusionnet_tf.inference import Predictor
    from fusionnet_tf.inference.predictor import check_volume_for_3d_model, read_model_offsets
    from fusionnet_tf.data.affinity_io import check_affinity_output, write_affinities

    for option, value in (("--isbi", args.isbi), ("--overlay", args.overlay),
                          ("--dtype uint8", args.dtype == "uint8")):
        if value:
            raise ValueError(f"{option} applies to membrane maps; the model predicts 3D "
                             "affinities")
    from fusionnet_tf.io import ome_zarr

    if not ome_zarr.wants_ome_zarr(args.output, args.output_format):
        check_affinity_output(args.output)
    check_volume_for_3d_model(images.shape, f"INPUT {args.input}")
    if offsets is None and args.model:
        offsets = read_model_offsets(args.model)
    if offsets is None:
        raise ValueError(f"the offsets of the 3D model {args.model or args.serving_url} are "
                         "unknown: give --offsets '[[dz,dy,dx], ...]' or write "
                         "MODEL.offsets.json beside the model")
    predictor = Predictor(model, options, progress=not args.quiet, offsets=offsets)
    affinities = predictor.predict(images)
    variant = predictor.variant
    metadata = {
        "input": str(args.input), "model": args.model_name or args.model or args.serving_url,
        "tile": list(predictor.tile_shape), "overlap": list(predictor.overlap),
        "tta": args.tta, "blending": args.blending, "normalization": options.normalization,
        "precision": variant["precision"], "engine": variant["engine"],
    }
    from fusionnet_tf.io import ome_zarr

    if ome_zarr.wants_ome_zarr(args.output, args.output_format):
        plan = ome_zarr.output_plan_for(args, "affinities", "predict", args.input)
        ome_zarr.write_ome_zarr(args.output, affinities, plan)
    else:
        write_affinities(args.output, affinities, predictor.offsets, metadata)
    print(f"wrote {args.output}: {affinities.shape} float32 affinities for "
          f"{len(predictor.offsets)} offsets", file=sys.stderr)
    if args.segment:
        from fusionnet_tf.cli.affinity_segment import segment_and_write_affinities

        segment_and_write_affinities(affinities, predictor.offsets, args.segment,
                                     args.segment_params, args.output)
    return 0


def _check_segment_output(args):
    """With ``--segment``: check LABELS and the parameters before predicting.

    Returns:
        ``SegmentParams`` (``AffinityParams`` for a 3D affinity model: ``--params``,
        else those shipped with a named model), or None without ``--segment``.
    """
    if not args.segment:
        if args.segment_overlay:
            raise ValueError("--segment-overlay needs --segment")
        return None
    from fusionnet_tf.cli.segment import check_inputs_outputs, resolve_params
    from fusionnet_tf.segmentation.io import check_label_output

    check_inputs_outputs([("INPUT", args.input), ("--output", args.output),
                          ("--overlay", args.overlay)], args.segment, args.segment_overlay,
                         option="--segment", overlay_option="--segment-overlay")
    check_label_output(args.segment, "--segment")
    if _is_affinity_model_file(args):
        from fusionnet_tf.cli.affinity_segment import resolve_affinity_params

        for option, given in (("--mode 3d", args.mode != "2d"),
                              ("--keep-boundaries", args.keep_boundaries),
                              ("--segment-overlay", args.segment_overlay)):
            if given:
                raise ValueError(f"{option} applies to membrane maps; the model "
                                 f"{args.model_name or args.model} predicts 3D affinities "
                                 "(segmented in 3D; choose the method with --set method=mws)")
        return resolve_affinity_params(args, model=args.model)
    return resolve_params(args)


def _is_affinity_model_file(args):
    """True if ``--model`` is a 3D affinity model file (read cheaply, no TensorFlow)."""
    if not args.model or args.serving_url:
        return False
    from fusionnet_tf.inference.predictor import model_file_spatial_dims

    return model_file_spatial_dims(args.model) == 3
