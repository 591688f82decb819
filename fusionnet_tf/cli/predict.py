"""``fusionnet predict``: membrane probability maps for an image or a stack.

Reads INPUT (TIFF stack, image, folder of slices or ``file.h5:/key``),
normalizes each slice, predicts with overlap tiles and test-time augmentation
and writes OUTPUT atomically (``.tif``, ``.h5[:/key]``, ``.png`` or a folder
of PNGs). The model is ``--model PATH``, a TF Serving endpoint
(``--serving-url``) or, by default, the shipped pretrained FusionNet.
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
                             "Files are replaced atomically.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="PATH", default=None,
                        help="A .keras file or SavedModel folder (default: the shipped "
                             "pretrained ISBI 2012 FusionNet).")
    source.add_argument("--serving-url", metavar="URL", default=None,
                        help="Predict through a TF Serving REST endpoint, "
                             "http://HOST:PORT/v1/models/NAME (default: not used).")
    add_tiling_arguments(parser)
    parser.add_argument("--isbi", action="store_true",
                        help="Write 1 - membrane probability (high = cell interior), the ISBI "
                             "2012 submission convention (default: membrane probability).")
    parser.add_argument("--dtype", choices=("float32", "uint8"), default="float32",
                        help="Output dtype for TIFF/HDF5; uint8 is probability x 255 "
                             "(default: float32; PNG is always uint8).")
    parser.add_argument("--overlay", metavar="PATH", default=None,
                        help="Also write image + predicted membrane overlays: a .png (one "
                             "slice) or a new folder of PNGs (default: none).")
    parser.add_argument("--quiet", action="store_true",
                        help="No progress bar (default: progress bar on stderr).")
    parser.set_defaults(run=run)


def add_tiling_arguments(parser):
    """The Predictor options shared by ``predict`` and ``predict-volume``.

    Adds ``--tile``, ``--overlap``, ``--tta``, ``--batch-size``, ``--blending``,
    ``--normalization``, ``--align``, ``--xla`` and ``--precision`` with the Predictor's
    defaults, so both
    commands tile, blend and normalize the same way.
    """
    parser.add_argument("--tile", type=int, default=512,
                        help="Tile side in pixels, a multiple of 2**depth (default: 512).")
    parser.add_argument("--overlap", type=int, default=64,
                        help="Minimum overlap between tiles in pixels (default: 64).")
    parser.add_argument("--tta", type=int, choices=(1, 4, 8), default=8,
                        help="Test-time augmentation: 1 = none, 4 = mirrorings, "
                             "8 = all rotations and flips (default: 8).")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="Network inputs (tiles x TTA variants) per call (default: 4).")
    parser.add_argument("--blending", choices=("gaussian", "cosine", "constant"),
                        default="gaussian", help="Tile blending weights (default: gaussian).")
    parser.add_argument("--normalization", choices=("slice", "global", "dtype"), default="slice",
                        help="Intensity normalization to [0, 1]: per-slice min-max, whole-stack "
                             "min-max or the dtype range (default: slice).")
    parser.add_argument("--align", type=int, default=None,
                        help="Tile origins are multiples of this (default: 2**depth for a Keras "
                             "model, 1 for a SavedModel or serving endpoint).")
    parser.add_argument("--xla", action="store_true",
                        help="Compile a .keras model with XLA. On a CPU it is faster for wide "
                             "models (base 64: ~15%%) and slower for narrow ones (base 16, the "
                             "shipped model: ~40%%); compiling takes a few seconds "
                             "(default: off).")
    parser.add_argument("--precision", choices=("float32", "mixed_bfloat16", "mixed_float16"),
                        default="float32",
                        help="Compute precision of a .keras model. mixed_bfloat16 is several "
                             "times faster on CPUs with bfloat16 units (AMX/AVX512-BF16, e.g. "
                             "Intel Xeon Sapphire Rapids and later) and on GPUs, and changes "
                             "probabilities by ~1e-3 on average; mixed_float16 is for GPUs "
                             "(default: float32).")


def check_output(spec):
    """Fail early, before any prediction, if ``spec`` cannot be written.

    Raises:
        ValueError: unknown output format.
        FileNotFoundError / PermissionError: missing or read-only parent folder.
        FileExistsError: a PNG folder output that exists and is not empty.
        IsADirectoryError: a file output that names an existing folder.
    """
    import os
    from pathlib import Path

    from fusionnet_tf.inference.writers import output_kind, split_output_spec

    kind = output_kind(spec)
    path, _ = split_output_spec(spec)
    if kind != "png_folder" and path.is_dir():
        raise IsADirectoryError(f"output is an existing folder, expected a file: {path}")
    if kind == "png_folder" and path.exists() and any(path.iterdir()):
        raise FileExistsError(f"output folder exists and is not empty: {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {parent} (for {spec})")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder is not writable: {parent} (for {spec})")
    return kind


def resolve_model(args):
    """The model or callable the Predictor runs, from --model / --serving-url."""
    from fusionnet_tf.cli import CommandError

    if args.serving_url:
        try:
            from fusionnet_tf.export.rest_client import ServingClient
        except ImportError as exc:
            raise CommandError(f"--serving-url needs fusionnet_tf.export: {exc}") from exc
        return ServingClient(args.serving_url)
    if args.model:
        from fusionnet_tf.inference import load_model

        return load_model(args.model)
    from fusionnet_tf.pretrained import load_pretrained

    return load_pretrained()


def run(args):
    """Predict INPUT and write OUTPUT. Returns 0."""
    import sys

    from fusionnet_tf.data import normalize, read_stack
    from fusionnet_tf.inference import Predictor
    from fusionnet_tf.inference.writers import write_overlays, write_prediction

    check_output(args.output)
    if args.overlay:
        check_output(args.overlay)
    images = normalize(read_stack(args.input), mode=args.normalization)
    for option, spec in (("--output", args.output), ("--overlay", args.overlay)):
        if spec and str(spec).lower().endswith(".png") and len(images) > 1:
            raise ValueError(f"{option} {spec}: a .png holds one slice but INPUT has "
                             f"{len(images)}; give a folder or a .tif")
    predictor = Predictor(
        resolve_model(args), tile_shape=args.tile, overlap=args.overlap, tta=args.tta,
        batch_size=args.batch_size, blending=args.blending, progress=not args.quiet,
        align=args.align, jit_compile=args.xla, precision=args.precision,
    )
    membrane = predictor.predict(images)
    metadata = {
        "input": str(args.input), "model": args.model or args.serving_url or "pretrained",
        "tile": args.tile, "overlap": args.overlap, "tta": args.tta,
        "blending": args.blending, "normalization": args.normalization,
        "precision": args.precision,
    }
    write_prediction(args.output, membrane, dtype=args.dtype, isbi=args.isbi, metadata=metadata)
    if args.overlay:
        write_overlays(args.overlay, images, membrane)
    what = "1 - membrane probability (ISBI)" if args.isbi else "membrane probability"
    print(f"wrote {args.output}: {membrane.shape} {args.dtype} {what}", file=sys.stderr)
    return 0
