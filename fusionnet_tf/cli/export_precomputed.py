"""``fusionnet export-precomputed``: Neuroglancer precomputed layers, meshes and skeletons."""

HELP = "Write a segmentation (and image) as Neuroglancer precomputed layers with meshes."

DESCRIPTION = """\
Write a (Z, Y, X) label volume as a Neuroglancer precomputed segmentation layer
(compressed_segmentation chunks), optionally with the raw image (or a probability
map) as an image layer, per-neuron multi-resolution 3D meshes (--mesh: zmesh
marching cubes at --mesh-lods levels of detail, Draco-encoded, Neuroglancer's
neuroglancer_multilod_draco format) and one skeleton per id (--skeleton,
kimimaro). Works block by block on Dask threads: a zarr or HDF5
input is never loaded whole. Serve OUT_DIR over HTTP and open
precomputed://http://HOST/OUT_DIR/segmentation in Neuroglancer, or look at it with
'fusionnet view'. Needs: pip install 'fusionnet-tf[volumes]'.
"""

EPILOG = """\
examples:
  fusionnet export-precomputed neurons.zarr ng/ --image em.zarr --mesh --voxel-size 30,6,6
  fusionnet export-precomputed labels.tif ng/ --mesh --skeleton --min-voxels 1000
"""


def add_parser(subparsers):
    """Register ``export-precomputed``; argparse only."""
    import argparse

    parser = subparsers.add_parser("export-precomputed", help=HELP, description=DESCRIPTION,
                                   epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("labels", metavar="LABELS",
                        help="Integer label volume (Z, Y, X): 'labels.tif', a folder of slices, "
                             "'labels.h5:/key', 'labels.zarr[:/key]'; 0 = background.")
    parser.add_argument("output", metavar="OUT_DIR",
                        help="Output folder (image/ and segmentation/ layers). An earlier "
                             "output of this command is replaced; any other folder is refused.")
    parser.add_argument("--image", default=None,
                        help="Raw EM or probability volume of the same shape, written as an "
                             "image layer.")
    parser.add_argument("--mesh", action="store_true",
                        help="Write a 3D mesh of every id with at least --min-voxels voxels.")
    parser.add_argument("--skeleton", action="store_true",
                        help="Write kimimaro skeletons of the same ids.")
    parser.add_argument("--voxel-size", default=None, metavar="Z,Y,X",
                        help="Voxel size z,y,x in nm (default: an OME-Zarr LABELS' or "
                             "--image's metadata, else 1,1,1; SNEMI3D: 30,6,6).")
    parser.add_argument("--min-voxels", type=int, default=100,
                        help="Smallest id, in voxels, that gets a mesh/skeleton (default: 100).")
    parser.add_argument("--mesh-lods", type=int, default=3,
                        help="Levels of detail of the multi-resolution meshes, 1 to 5; LOD k "
                             "meshes every 2**k-th voxel in-plane (default: 3).")
    parser.add_argument("--block", type=int, default=512,
                        help="Block height and width in voxels per task, a multiple of 64 "
                             "(default: 512).")
    parser.add_argument("--block-z", type=int, default=32,
                        help="Slices per block, a multiple of 16 (default: 32).")
    parser.add_argument("--workers", type=int, default=1,
                        help="Dask threads (default: 1).")
    parser.set_defaults(run=run)


def check_args(args):
    """Validate the options and inputs before any work; returns ``(labels, image, voxel_size)``."""
    from fusionnet_tf.io.outputs import check_not_input, check_output_path
    from fusionnet_tf.io.ome_zarr import voxel_size_nm
    from fusionnet_tf.volumes.precomputed import (check_block_shape, image_dtype,
                                                  is_precomputed_output, label_dtype)
    from fusionnet_tf.volumes.storage import open_any_volume

    voxel_size, _ = voxel_size_nm(args.voxel_size, (args.labels, args.image))
    if args.min_voxels < 1:
        raise ValueError(f"--min-voxels must be >= 1; received {args.min_voxels}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1; received {args.workers}")
    if not 1 <= args.mesh_lods <= 5:
        raise ValueError(f"--mesh-lods must be from 1 to 5; received {args.mesh_lods}")
    try:
        check_block_shape((args.block_z, args.block, args.block))
    except ValueError:
        raise ValueError(f"--block must be a positive multiple of 64 and --block-z of 16; "
                         f"received --block {args.block} --block-z {args.block_z}") from None
    for spec, name in ((args.labels, "LABELS"), (args.image, "--image")):
        if spec is not None:
            check_not_input(args.output, spec, "OUT_DIR", name)
    check_output_path(args.output, f"OUT_DIR {args.output}", folder_output=True,
                      earlier_output=is_precomputed_output)
    labels, _ = open_any_volume(args.labels, f"LABELS {args.labels}")
    label_dtype(labels.dtype, f"LABELS {args.labels}")
    image = None
    if args.image is not None:
        image, _ = open_any_volume(args.image, f"--image {args.image}")
        image_dtype(image.dtype, f"--image {args.image}")
        if tuple(image.shape) != tuple(labels.shape):
            raise ValueError(f"--image {args.image} has shape {tuple(image.shape)} but LABELS "
                             f"has shape {tuple(labels.shape)}; they must be the same volume")
    return labels, image, voxel_size


def run(args):
    """Check everything, export, print a one-line summary on stderr. Returns 0."""
    import sys

    from fusionnet_tf.volumes.precomputed import export_precomputed, import_volume_packages

    import_volume_packages(args.mesh, args.skeleton)
    labels, image, voxel_size = check_args(args)
    settings = {"labels": str(args.labels), "image": args.image, "voxel_size": list(voxel_size),
                "mesh": args.mesh, "mesh_lods": args.mesh_lods, "skeleton": args.skeleton,
                "min_voxels": args.min_voxels}
    summary = export_precomputed(labels, args.output, image=image, voxel_size=voxel_size,
                                 mesh=args.mesh, skeleton=args.skeleton,
                                 min_voxels=args.min_voxels,
                                 block_shape=(args.block_z, args.block, args.block),
                                 workers=args.workers, mesh_lods=args.mesh_lods,
                                 labels_name=f"LABELS {args.labels}",
                                 image_name=f"--image {args.image}", settings=settings)
    z, y, x = summary["shape"]
    print(f"export-precomputed: {z}x{y}x{x} voxels, {summary['ids']} ids, "
          f"{summary['meshes']} meshes, {summary['skeletons']} skeletons -> {args.output} "
          f"({', '.join(summary['layers'])})", file=sys.stderr)
    return 0
