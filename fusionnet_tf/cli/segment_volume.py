"""``fusionnet segment-volume``: block-wise neurons from a large membrane or affinity volume."""

HELP = ("Segment neurons block by block in a large zarr/HDF5 membrane or affinity volume "
        "(resumable, Dask).")

DESCRIPTION = """\
Turn a (Z, Y, X) membrane probability volume too large for memory (e.g. what
'fusionnet predict-volume' writes) into a uint64 zarr label volume, with the
recipe of 'fusionnet segment'. Each block is segmented with a halo of context;
segments that cross a block face are joined by their overlap on the face, so every
cell has one id across blocks. With --mode 2d and blocks spanning whole slices the
result equals 'fusionnet segment'; blocks that cut slices (and --mode 3d) agree with
it up to a small adapted Rand error (0 on ISBI predictions with the default halo).
Finished blocks of each pass get done-markers inside OUT; rerunning the same command
resumes. An affinity volume (C, Z, Y, X) whose metadata says "kind": "affinities"
(e.g. 'predict-volume' with a 3D affinity model) is segmented in 3D like
'fusionnet segment AFF', with a halo in z too: --method mws block by block, stitched
as above; --method agglomeration cuts the blocks into its fragments and
agglomerates one graph of the whole volume's fragments (their faces summed over
blocks), which equals 'fusionnet segment AFF' when the blocks' fragments are those
of the whole volume (the graph must fit in memory). Needs: pip install
'fusionnet-tf[volumes]'.
"""

EPILOG = """\
examples:
  fusionnet segment-volume membranes.zarr neurons.zarr --workers 2
  fusionnet segment-volume membranes.h5:/prediction neurons.zarr --block 2048 --block-z 4
  fusionnet segment-volume membranes.zarr neurons.zarr --mode 3d --scheduler tcp://10.0.0.5:8786
  fusionnet segment-volume affinities.zarr neurons.zarr --params snemi3d --method mws
"""


def add_parser(subparsers):
    """Register ``segment-volume``; argparse only."""
    import argparse

    from fusionnet_tf.cli.predict_volume import add_dask_arguments
    from fusionnet_tf.cli.segment import add_method_argument, add_segment_arguments

    parser = subparsers.add_parser("segment-volume", help=HELP, description=DESCRIPTION,
                                   epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pred", metavar="PRED",
                        help="Membrane probability volume (Z, Y, X): 'volume.zarr', "
                             "'volume.zarr:/key' or 'volume.h5:/key'; float in [0, 1] or uint8 "
                             "0-255 (1 = membrane). Or an affinity file (C, Z, Y, X) float32 "
                             "with \"kind\": \"affinities\" and \"offsets\" metadata "
                             "(zarr or HDF5).")
    parser.add_argument("output", metavar="OUT",
                        help="Output zarr store (uint64 ids 1..K, one chunk per block). An "
                             "existing output of the same run is resumed.")
    add_segment_arguments(parser, keep_boundaries=False)
    add_method_argument(parser)
    # --mode does not apply to affinities: None tells an explicit --mode 2d from the default
    parser.set_defaults(mode=None)
    parser.add_argument("--block", type=int, default=None,
                        help="Block height and width in voxels = output chunk (default: 1024; "
                             "512 for affinities).")
    parser.add_argument("--block-z", type=int, default=None,
                        help="Slices per block (default: 1 in 2d mode, 16 in 3d mode and for "
                             "affinities).")
    parser.add_argument("--halo", type=int, default=64,
                        help="Voxels of context read around each block in-plane; along z "
                             "max(2, halo / anisotropy) slices for affinities and in 3d mode "
                             "with anisotropy < 3, none otherwise (sections are segmented on "
                             "their own) (default: 64). Smaller halos are faster but join "
                             "segments less like in-memory segmentation.")
    add_dask_arguments(parser, "PRED and OUT")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing output instead of resuming it "
                             "(default: resume).")
    parser.add_argument("--quiet", action="store_true",
                        help="No progress bars (default: one bar per pass on stderr).")
    from fusionnet_tf.io import ngff

    ngff.add_level_argument(parser)
    ngff.add_arguments(parser, labels=True)
    parser.set_defaults(run=run)


DEFAULT_BLOCK_Z = {"2d": 1, "3d": 16}  # membrane maps


def resolve_kind_and_params(args):
    """``(mode, params, default (block_z, block))`` for PRED: a membrane map or affinities.

    Affinity files (recognised by their metadata, as ``fusionnet segment``
    does) take ``AffinityParams`` from ``--params`` (default: those shipped
    with the model that predicted them, else ``AffinityParams()``),
    ``--set`` and ``--method``, and are segmented in 3D; membrane maps take
    ``SegmentParams`` and refuse ``--method``.
    """
    from fusionnet_tf.cli.segment import resolve_params
    from fusionnet_tf.data.affinity_io import affinity_metadata
    from fusionnet_tf.segmentation.blockwise import AFFINITIES, DEFAULT_BLOCK, MEMBRANE

    metadata = affinity_metadata(args.pred)
    if metadata is None:
        if args.method is not None:
            raise ValueError(f"--method applies to affinity files; PRED {args.pred} is not one "
                             f"(no \"kind\": \"affinities\" metadata)")
        mode = args.mode or "2d"
        return mode, resolve_params(args), (DEFAULT_BLOCK_Z[mode], DEFAULT_BLOCK[MEMBRANE][1])
    from fusionnet_tf.cli.affinity_segment import predicting_model, resolve_affinity_params

    if args.mode == "2d":
        raise ValueError(f"--mode 2d applies to membrane maps; PRED {args.pred} holds "
                         f"affinities, which are segmented in 3D")
    params = resolve_affinity_params(args, model=predicting_model(metadata))
    return "3d", params, DEFAULT_BLOCK[AFFINITIES][:2]


def run(args):
    """Check the options, run ``segment_volume``, print a one-line summary. Returns 0."""
    import sys

    from fusionnet_tf.cli import CommandError

    for option, value in (("--block", args.block), ("--block-z", args.block_z)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be a positive number of voxels; received {value}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0; received {args.workers}")
    from fusionnet_tf.cli.predict_volume import check_volume_paths, finish_ome_output
    from fusionnet_tf.io import ome_zarr

    args.pred = ome_zarr.level_spec(args.pred, args.level)
    plan = ome_zarr.check_cli_options(args, args.output, args.pred, "labels", "segment-volume")
    check_volume_paths(args.pred, args.output, plan)
    if plan is not None:  # labels under an image's labels/ group: the image's shape
        from fusionnet_tf.cli.predict_volume import input_shape

        ome_zarr.check_labels_shape(args.output, input_shape(args.pred))
    mode, params, (default_z, default_block) = resolve_kind_and_params(args)
    block_z = default_z if args.block_z is None else args.block_z
    block = default_block if args.block is None else args.block
    output = args.output if plan is None else ome_zarr.start_output(args.output, plan,
                                                                     args.overwrite)
    try:
        from fusionnet_tf.segmentation.blockwise import format_summary, segment_volume
        from fusionnet_tf.volumes import BlockFailures

        summary = segment_volume(args.pred, output, params, mode,
                                 block_shape=(block_z, block, block), halo=args.halo,
                                 workers=args.workers, scheduler=args.scheduler,
                                 overwrite=args.overwrite, progress=not args.quiet)
    except BlockFailures as exc:
        raise CommandError(str(exc)) from exc
    print(f"segment-volume: {format_summary(summary)}", file=sys.stderr)
    finish_ome_output(args, plan)
    return 0
