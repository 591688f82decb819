"""``fusionnet predict-volume``: block-wise prediction of a chunked volume on Dask."""

HELP = "Predict membranes block by block on a large zarr/N5/HDF5 volume (resumable, Dask)."

DESCRIPTION = """\
Predict membrane probabilities for a (Z, Y, X) volume too large for memory.
The volume is cut into blocks; each block is predicted from the same global tile
grid, test-time augmentation, blending and per-slice normalization as
'fusionnet predict' (the result equals whole-slice prediction, block borders are
invisible) and written as one chunk of a float32 zarr array. Finished blocks get a
done-marker in OUTPUT/.fusionnet-done/; rerunning the same command skips them, so
an interrupted run resumes. The engine and precision (--engine/--precision auto are
decided once, before the first block; a volume is long enough for auto to weigh
'frozen' against plain for wide models) are recorded in OUTPUT; a resumed run keeps
them, so an output never mixes two. Needs: pip install 'fusionnet-tf[volumes]'.
"""

EPILOG = """\
examples:
  fusionnet predict-volume em.zarr membranes.zarr --workers 2 --tta 1
  fusionnet predict-volume em.h5:/raw membranes.zarr --model my.keras --block 2048
  fusionnet predict-volume em.zarr:/raw out.zarr --scheduler tcp://10.0.0.5:8786
  fusionnet predict-volume em.n5:/volumes/raw membranes.ome.zarr --voxel-size 30,6,6
"""


def add_parser(subparsers):
    import argparse

    from fusionnet_tf.cli.predict import add_tiling_arguments

    parser = subparsers.add_parser("predict-volume", help=HELP, description=DESCRIPTION,
                                   epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", metavar="INPUT",
                        help="Input volume (Z, Y, X): 'volume.zarr' (zarr v2 or v3 array), "
                             "'volume.zarr:/key' (array in a zarr group), 'volume.n5:/key' or "
                             "'volume.n5/key' (N5 dataset, dimensions x first; needs "
                             "tensorstore) or 'volume.h5:/key'.")
    parser.add_argument("output", metavar="OUTPUT",
                        help="Output zarr store (float32 membrane probability, 1 = membrane). "
                             "An existing output of the same run is resumed.")
    parser.add_argument("--model", default=None, metavar="PATH|NAME",
                        help="A shipped model by name (isbi2012, snemi3d), a model file "
                             "(.keras) or SavedModel folder (default: isbi2012).")
    parser.add_argument("--block", type=int, default=1024,
                        help="Block height and width in voxels = output chunk (default: 1024). "
                             "Blocks that split a slice re-predict the tiles straddling their "
                             "borders; blocks several tiles wide (or whole slices) waste less.")
    parser.add_argument("--block-z", type=int, default=None,
                        help="Slices per block (default: 1; for a 3D affinity model the tile "
                             "depth, --tile-z).")
    add_tiling_arguments(parser)
    add_dask_arguments(parser, "INPUT, OUTPUT and --model")
    parser.add_argument("--tf-threads", type=int, default=None,
                        help="TensorFlow intra-op threads per worker (default: CPU cores / "
                             "--workers on a local cluster, TensorFlow's default otherwise).")
    parser.add_argument("--zarr-format", type=int, choices=(2, 3), default=3,
                        help="Zarr format of a new output (default: 3).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing output instead of resuming it "
                             "(default: resume).")
    parser.add_argument("--quiet", action="store_true",
                        help="No progress bar (default: progress bar over blocks on stderr).")
    from fusionnet_tf.io import ngff

    ngff.add_level_argument(parser)
    ngff.add_arguments(parser)
    parser.set_defaults(run=run)


def add_dask_arguments(parser, shared_paths):
    """``--workers`` / ``--scheduler``, shared by the block-wise commands.

    Args:
        parser: the subcommand's parser.
        shared_paths: what the workers must see at the same paths (for the help).
    """
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=1,
                       help="Worker processes of a local Dask cluster, one thread each; "
                            "0 runs in this process without Dask (default: 1).")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="Address of a running Dask scheduler, e.g. tcp://host:8786 "
                            "(default: none; start a local cluster). Workers must see "
                            f"{shared_paths} at the same paths.")


def run(args):
    import sys

    from fusionnet_tf.cli import CommandError

    from fusionnet_tf.cli.predict import check_tile_size, check_tiling_arguments

    from fusionnet_tf.pretrained import resolve_model_spec

    options = check_tiling_arguments(args)
    args.model, _ = resolve_model_spec(args.model)  # a shipped name -> its weights
    for option, value in (("--block", args.block), ("--block-z", args.block_z)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be a positive number of voxels; received {value}")
    from fusionnet_tf.io import ome_zarr
    from fusionnet_tf.volumes.runner import is_affinity_model

    args.input = ome_zarr.level_spec(args.input, args.level)
    kind = "affinities" if args.model and is_affinity_model(args.model) else "probability"
    plan = ome_zarr.check_cli_options(args, args.output, args.input, kind, "predict-volume")
    check_volume_paths(args.input, args.output, plan)
    shape = input_shape(args.input)
    check_tile_size(args.tile_size, shape[1], shape[2], args.tta)
    tiling = _tiling(args, options)
    output = args.output if plan is None else ome_zarr.start_output(args.output, plan,
                                                                     args.overwrite)
    try:
        from fusionnet_tf.volumes import BlockFailures, format_summary, predict_volume

        summary = predict_volume(
            args.input, output, args.model, tiling["options"],
            block_shape=(tiling["block_z"], args.block, args.block), offsets=tiling["offsets"],
            workers=args.workers, scheduler=args.scheduler, tf_threads=args.tf_threads,
            zarr_format=args.zarr_format, overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except BlockFailures as exc:
        raise CommandError(str(exc)) from exc
    print(f"predict-volume: {format_summary(summary)}", file=sys.stderr)
    finish_ome_output(args, plan)
    return 0


def finish_ome_output(args, plan):
    """Build the pyramid and metadata of an OME-Zarr OUTPUT (nothing for plain zarr)."""
    import sys

    if plan is None:
        return
    from fusionnet_tf.io import ome_zarr

    shapes = ome_zarr.finish_output(args.output, scheduler=args.scheduler,
                                    workers=max(1, args.workers))
    print(f"{plan.command}: OME-Zarr {plan.ngff_version} {plan.kind}, {len(shapes)} levels "
          f"{shapes[0]} .. {shapes[-1]}, voxel size {plan.voxel_size} {plan.unit} -> "
          f"{args.output}", file=sys.stderr)


def _tiling(args, options):
    """``PredictOptions`` (3D tiles for a 3D affinity model), offsets and block depth.

    Raises:
        ValueError: a 3D-only option (--tile-z, --overlap-z, --offsets) with a 2D model.
    """
    from fusionnet_tf.cli.predict import parse_offsets, refuse_affinity_options
    from fusionnet_tf.volumes.runner import is_affinity_model

    offsets = parse_offsets(args.offsets)
    if not (args.model and is_affinity_model(args.model)):
        refuse_affinity_options(args)
        return {"options": options, "offsets": None,
                "block_z": 1 if args.block_z is None else args.block_z}
    tile_z = options.tile(3)[0]
    return {"options": options, "offsets": offsets,
            "block_z": tile_z if args.block_z is None else args.block_z}


def check_volume_paths(input_spec, output, ome_plan=None):
    """The output guard of the block-wise commands, before any work.

    OUTPUT must not be, contain or lie inside INPUT, and an existing OUTPUT
    must be empty or an earlier output of a block-wise command (resumed or,
    with ``--overwrite``, replaced); any other folder or zarr store is refused.
    An OME-Zarr OUTPUT (``ome_plan``) must be new, empty or an earlier output
    of the same command.
    """
    from fusionnet_tf.io.outputs import check_not_input, check_output_path
    from fusionnet_tf.volumes.storage import is_volume_output

    check_not_input(output, input_spec, "OUTPUT", "INPUT")
    if ome_plan is not None:
        from fusionnet_tf.io import ome_zarr

        ome_zarr.check_output(output, ome_plan.command)
        return
    check_output_path(output, f"OUTPUT {output}", folder_output=True,
                      earlier_output=is_volume_output)


def input_shape(spec):
    """``(Z, Y, X)`` of the input volume (opened lazily and closed again)."""
    from fusionnet_tf.data.readers import close_stack
    from fusionnet_tf.volumes.storage import open_volume

    volume, _ = open_volume(spec)
    shape = tuple(int(n) for n in volume.shape)
    close_stack(volume)
    return shape
