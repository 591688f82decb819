"""NGFF (OME-Zarr) names and the command-line options that choose them.

Kept apart from ``ome_zarr`` so that building the CLI's parsers imports no
numpy (``fusionnet --help`` stays cheap); ``ome_zarr`` reads these constants.
"""

NGFF_VERSIONS = ("0.4", "0.5")
DEFAULT_NGFF_VERSION = "0.5"
LABEL_METHODS = ("mode", "nearest")
MIN_PYRAMID_EXTENT = 256


def add_arguments(parser, labels=False, formats=True):
    """The OME-Zarr options of a command: --format, --ngff-version, --voxel-size, ... .

    ``formats=False`` leaves out ``--format`` (the output name alone decides).
    """
    group = parser.add_argument_group("OME-Zarr output (an output named *.ome.zarr"
                                      + (", or --format ome-zarr)" if formats else ")"))
    if formats:
        group.add_argument("--format", dest="output_format", choices=("auto", "ome-zarr"),
                           default="auto",
                           help="Output format: 'auto' follows the name (*.ome.zarr is "
                                "OME-Zarr), 'ome-zarr' forces it (default: auto).")
    group.add_argument("--ngff-version", choices=NGFF_VERSIONS, default=DEFAULT_NGFF_VERSION,
                       help="OME-Zarr version: 0.4 (zarr v2) or 0.5 (zarr v3) (default: "
                            f"{DEFAULT_NGFF_VERSION}).")
    group.add_argument("--voxel-size", default=None, metavar="Z,Y,X",
                       help="Voxel size in nanometers, e.g. 30,6,6 (default: the input's "
                            "OME-Zarr metadata, else 1,1,1).")
    group.add_argument("--pyramid-levels", type=int, default=None, metavar="N",
                       help="Resolution levels including full resolution (default: halve "
                            f"until the image is at most {MIN_PYRAMID_EXTENT} px wide).")
    if labels:
        group.add_argument("--label-downsampling", choices=LABEL_METHODS, default="mode",
                           help="How label pyramid levels pick an id per window: the most "
                                "frequent one, or the first voxel's (default: mode).")


def add_level_argument(parser):
    """``--level N``: the resolution level of an OME-Zarr INPUT."""
    parser.add_argument("--level", type=int, default=None, metavar="N",
                        help="Resolution level of an OME-Zarr INPUT (default: 0, full "
                             "resolution).")
