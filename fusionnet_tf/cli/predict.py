"""``fusionnet predict``: membrane probability maps for an image or a stack.

Reads INPUT (TIFF stack, image, folder of slices or ``file.h5:/key``),
normalizes each slice, predicts with overlap tiles and test-time augmentation
and writes OUTPUT atomically (``.tif``, ``.h5[:/key]``, ``.png`` or a folder
of PNGs). An OUTPUT inside the HDF5 file that holds INPUT is added to it; the
input dataset itself is never overwritten. The model is ``--model PATH``, a TF
Serving endpoint (``--serving-url``) or, by default, the shipped pretrained
FusionNet.
"""

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
                             ".png (one slice) or a folder of PNGs (must be new or empty). "
                             "Files are replaced atomically; in an existing HDF5 file only "
                             "the dataset KEY is replaced, other datasets are kept (but "
                             "never the INPUT dataset).")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH", default=None,
                        help="A .keras file, a bioimage.io package .zip (its keras_v3 weights), "
                             "an .onnx or .tflite file from 'fusionnet export', or a SavedModel "
                             "folder (default: the shipped pretrained ISBI 2012 FusionNet).")
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
                             "slice) or a new folder of PNGs (default: none).")
    parser.add_argument("--quiet", action="store_true",
                        help="No progress bar (default: progress bar on stderr).")
    parser.add_argument("--segment", metavar="LABELS", default=None,
                        help="Also segment neurons from the prediction, as 'fusionnet segment' "
                             "does, and write the label image here: .tif (uint32), .h5[:/key] "
                             "or .zarr (default: no segmentation).")
    from fusionnet_tf.cli.segment import add_segment_arguments
    from fusionnet_tf.cli.slices import add_slices_argument

    add_slices_argument(parser, "INPUT (the outputs hold only those)")
    add_segment_arguments(parser)
    parser.set_defaults(run=run)


def add_tiling_arguments(parser):
    """The Predictor options shared by ``predict`` and ``predict-volume``.

    Adds ``--tile-size`` (alias ``--tile``), ``--overlap``, ``--tta``, ``--batch-size``, ``--blending``,
    ``--normalization``, ``--align``, ``--engine``, ``--xla`` (= ``--engine xla``) and
    ``--precision`` with the Predictor's defaults, so both
    commands tile, blend and normalize the same way.
    """
    from fusionnet_tf.choices import (BLENDINGS, ENGINES, INFERENCE_PRECISION_CHOICES,
                                      NORMALIZATION_MODES, TTA_VALUES)

    parser.add_argument("--tile-size", "--tile", dest="tile_size", type=int, default=512,
                        help="Tile side in pixels (as in 'fusionnet export --tile-size'; "
                             "--tile is the older name, still accepted), a multiple of the "
                             "model's 2**depth "
                             "(16 for FusionNet/U-Net depth 4, 32 for FCN) (default: 512).")
    parser.add_argument("--overlap", type=int, default=64,
                        help="Minimum overlap between tiles in pixels (default: 64).")
    parser.add_argument("--tta", type=int, choices=TTA_VALUES, default=8,
                        help="Test-time augmentation: 1 = none, 4 = mirrorings, "
                             "8 = all rotations and flips (default: 8).")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="Network inputs (tiles x TTA variants) per call; every call is "
                             "padded to it (default: the TTA variants of as few tiles as make "
                             "~256x256 pixels, at most one slice's tiles: one 512 px tile, "
                             "16 tiles of 64 px without TTA).")
    parser.add_argument("--blending", choices=BLENDINGS,
                        default="gaussian", help="Tile blending weights (default: gaussian).")
    parser.add_argument("--normalization", choices=NORMALIZATION_MODES, default="slice",
                        help="Intensity normalization to [0, 1]: per-slice min-max, whole-stack "
                             "min-max or the dtype range (default: slice).")
    parser.add_argument("--align", type=int, default=None,
                        help="Tile origins are multiples of this (default: the 2**depth of a Keras "
                             "model, package, .onnx or .tflite file, 1 for a SavedModel or "
                             "serving endpoint).")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="How a .keras model runs: plain (BatchNorm folded, oneDNN), "
                             "frozen (plain with the weights as graph constants: for wide "
                             "models faster per call but seconds longer to start, e.g. base "
                             "64: ~13%% faster, +7-13 s; base 16: 0-5%%, +0.2 s), xla "
                             "(also compiled with XLA: on a CPU faster for wide models, slower "
                             "for narrow ones, compiles for seconds) or auto: on the first "
                             "batch time the eligible variants (plain, frozen, xla, and "
                             "bfloat16 with --precision auto), keep "
                             "the fastest for the job, start-up included, and cache the "
                             "timings per model, tile and machine (in $FUSIONNET_TF_CACHE_DIR "
                             "or ~/.cache/fusionnet-tf); a job under 8 calls (e.g. one slice) "
                             "runs plain, untimed; one under 5 s runs on the first variant "
                             "tried (default: auto).")
    parser.add_argument("--xla", action="store_true",
                        help="The same as --engine xla (the older name) (default: off).")
    parser.add_argument("--precision", choices=INFERENCE_PRECISION_CHOICES,
                        default="float32",
                        help="Compute precision of a .keras model. mixed_bfloat16 is several "
                             "faster on CPUs with bfloat16 matrix instructions (AMX: about 7x; "
                             "AVX512-BF16: about 2x) and on GPUs, and changes "
                             "probabilities by ~1e-3 on average; mixed_float16 is for GPUs; "
                             "auto lets --engine auto also time mixed_bfloat16 where the "
                             "machine has those units (default: float32).")


def engine_argument(args):
    """The engine from ``--engine`` and ``--xla`` (the older flag for ``--engine xla``).

    Raises:
        ValueError: ``--xla`` with ``--engine plain``.
    """
    if args.xla and args.engine not in ("auto", "xla"):
        raise ValueError(f"--xla conflicts with --engine {args.engine}; give one of them")
    return "xla" if args.xla else args.engine


def check_output(spec, option="--output"):
    """Fail early, before any prediction, if ``spec`` cannot be written.

    Args:
        spec: the output spec.
        option: ``"--output"`` (any prediction format) or ``"--overlay"``
            (a ``.png`` or a folder only); named in the error messages.

    Returns:
        The output kind: ``"tiff"``, ``"hdf5"``, ``"png"`` or ``"png_folder"``.

    Raises:
        ValueError: unknown output format, an overlay that is not a ``.png``
            or folder, or an HDF5 target that cannot take the dataset.
        FileNotFoundError / PermissionError: missing or read-only parent folder.
        FileExistsError: a PNG folder output that exists and is not empty.
        IsADirectoryError: a file output that names an existing folder.
    """
    from fusionnet_tf.inference.writers import (DEFAULT_HDF5_KEY, check_hdf5_target,
                                                output_kind, overlay_kind, split_output_spec)
    from fusionnet_tf.io_utils import check_output_folder

    kind = overlay_kind(spec, option) if option == "--overlay" else output_kind(spec)
    path, key = split_output_spec(spec)
    if kind != "png_folder" and path.is_dir():
        raise IsADirectoryError(f"{option} {spec}: is an existing folder, expected a file")
    if kind == "png_folder" and path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{option} {spec}: output folder exists and is not empty: {path}")
    check_output_folder(path, f"{option} {spec}")
    if kind == "hdf5":
        check_hdf5_target(path, key or DEFAULT_HDF5_KEY)
    return kind


def _same_path(first, second):
    """True if two paths name the same file or folder (existing or not)."""
    import os

    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()


def check_not_input(input_spec, output, overlay=None):
    """Refuse outputs that would overwrite INPUT (or each other), before predicting.

    Writing into the HDF5 file that holds the INPUT dataset is allowed (the
    file's other datasets are kept); writing to the INPUT dataset itself, or
    any other output over the INPUT file, is refused.

    Raises:
        ValueError: naming the option, the output and INPUT.
    """
    from pathlib import Path

    check_output_not_input(input_spec, output)
    if overlay is None:
        return
    overlay_path = Path(overlay)
    if _same_path(_stored_in(input_spec)[0], overlay_path):
        raise ValueError(f"--overlay {overlay} would overwrite INPUT {input_spec}; "
                         f"choose another path")
    if _same_path(_stored_in(output)[0], overlay_path):
        raise ValueError(f"--overlay {overlay} is the same path as --output {output}; "
                         f"choose another path")


def _stored_in(spec):
    """``(path, hdf5_key_or_None, kind)`` of the file or store that holds ``spec``.

    ``kind`` is ``"hdf5"`` for ``file.h5[:/key]``, ``"zarr"`` for
    ``store.zarr[:/key]`` (the path is the store's folder) and ``"file"``
    otherwise.
    """
    from pathlib import Path

    from fusionnet_tf.data.readers import split_hdf5_spec

    hdf5 = split_hdf5_spec(spec)
    if hdf5 is not None:
        return hdf5[0], hdf5[1], "hdf5"
    text = str(spec)
    index = text.lower().find(".zarr:")
    if index >= 0:
        return Path(text[:index + len(".zarr")]), None, "zarr"
    return Path(text), None, "zarr" if text.lower().rstrip("/").endswith(".zarr") else "file"


def check_output_not_input(input_spec, output, input_name="INPUT", output_name="--output",
                           default_key=None):
    """Refuse an output that would overwrite an input, before any work.

    An output over the input's file, over the zarr store that holds it, over
    a folder that contains it or inside the input's folder or store is
    refused. Only an HDF5 output into the HDF5
    file that holds the input is allowed (the writers keep the file's other
    datasets), unless it names the input dataset itself (or a link to it).

    Args:
        input_spec: the input spec (``file.tif``, ``file.h5:/key``,
            ``store.zarr:/key``, a folder, ...).
        output: the output spec.
        input_name, output_name: how the error message calls them.
        default_key: the HDF5 key the output is written to when it names
            none (default: ``fusionnet predict``'s).

    Raises:
        ValueError: naming both.
    """
    from fusionnet_tf.data.readers import resolve_hdf5_key
    from fusionnet_tf.inference.writers import DEFAULT_HDF5_KEY, hdf5_key

    input_path, input_key, input_kind = _stored_in(input_spec)
    output_path, output_key, output_kind = _stored_in(output)
    inside = _contains(output_path, input_path) or _contains(input_path, output_path)
    if not (_same_path(input_path, output_path) or inside):
        return
    if inside or input_kind != "hdf5" or output_kind != "hdf5":
        raise ValueError(f"{output_name} {output} would overwrite {input_name} {input_spec}; "
                         f"choose another output path")
    output_key = hdf5_key(output_key or default_key or DEFAULT_HDF5_KEY)
    input_key = resolve_hdf5_key(input_path, input_key) if input_path.exists() else None
    if input_key is not None and (hdf5_key(input_key) == output_key
                                  or _same_hdf5_object(input_path, input_key, output_key)):
        raise ValueError(f"{output_name} {output} is the {input_name} dataset ({input_spec}); "
                         f"write to another key, e.g. {output_path}:/{output_key}_out")


def _contains(folder, path):
    """True if ``path`` lies inside the existing folder ``folder`` (a folder input, a zarr store)."""
    import os

    if not folder.is_dir():
        return False
    folder, path = os.path.realpath(folder), os.path.realpath(path)
    return path != folder and path.startswith(folder.rstrip(os.sep) + os.sep)


def _same_hdf5_object(path, key, other):
    """True if ``key`` and ``other`` of HDF5 file ``path`` are one object (e.g. via a link)."""
    import h5py

    with h5py.File(path, "r") as handle:
        first, second = handle.get(key), handle.get(other)
        return first is not None and second is not None and first == second


def resolve_model(args):
    """The model or callable the Predictor runs, from --model / --serving-url."""
    if args.serving_url:
        from fusionnet_tf.export.rest_client import ServingClient

        return ServingClient(args.serving_url)
    if args.model:
        from fusionnet_tf.inference import load_model

        return load_model(args.model)
    from fusionnet_tf.pretrained import load_pretrained

    return load_pretrained()


def run(args):
    """Predict INPUT and write OUTPUT. Returns 0."""
    import sys

    from fusionnet_tf.cli.slices import select_slices
    from fusionnet_tf.data import normalize, read_stack
    from fusionnet_tf.data.normalize import check_finite
    from fusionnet_tf.inference import Predictor
    from fusionnet_tf.inference.predictor import check_precision_applies
    from fusionnet_tf.inference.writers import write_overlays, write_prediction

    check_output(args.output)
    if args.overlay:
        check_output(args.overlay, "--overlay")
    check_not_input(args.input, args.output, args.overlay)
    params = _check_segment_output(args)
    engine = engine_argument(args)
    check_precision_applies(args.precision, args.serving_url or args.model)
    raw = check_finite(select_slices(read_stack(args.input), args.slices), f"INPUT {args.input}")
    images = normalize(raw, mode=args.normalization)
    for option, spec in (("--output", args.output), ("--overlay", args.overlay)):
        if spec and str(spec).lower().endswith(".png") and len(images) > 1:
            raise ValueError(f"{option} {spec}: a .png holds one slice but INPUT has "
                             f"{len(images)}; give a folder or a .tif")
    predictor = Predictor(
        resolve_model(args), tile_shape=args.tile_size, overlap=args.overlap, tta=args.tta,
        batch_size=args.batch_size, blending=args.blending, progress=not args.quiet,
        align=args.align, precision=args.precision, engine=engine,
    )
    membrane = predictor.predict(images)
    variant = predictor.variant
    metadata = {
        "input": str(args.input), "model": args.model or args.serving_url or "pretrained",
        "tile": args.tile_size, "overlap": args.overlap, "tta": args.tta,
        "blending": args.blending, "normalization": args.normalization,
        "precision": variant["precision"], "engine": variant["engine"],
    }
    if args.slices:
        metadata["slices"] = args.slices
    write_prediction(args.output, membrane, dtype=args.dtype, isbi=args.isbi, metadata=metadata)
    if args.overlay:
        write_overlays(args.overlay, images, membrane)
    what = "1 - membrane probability (ISBI)" if args.isbi else "membrane probability"
    print(f"wrote {args.output}: {membrane.shape} {args.dtype} {what}", file=sys.stderr)
    if args.segment:
        from fusionnet_tf.cli.segment import segment_and_write

        segment_and_write(membrane, args.segment, args, params, args.input)
    return 0


def _check_segment_output(args):
    """With ``--segment``: check LABELS and the parameters before predicting.

    Returns:
        ``SegmentParams``, or None without ``--segment``.
    """
    if not args.segment:
        return None
    from fusionnet_tf.cli.segment import check_inputs_outputs, resolve_params
    from fusionnet_tf.segmentation.io import check_label_output

    check_label_output(args.segment)
    check_inputs_outputs([("INPUT", args.input), ("--output", args.output),
                          ("--overlay", args.overlay)], args.segment, option="--segment")
    return resolve_params(args)
