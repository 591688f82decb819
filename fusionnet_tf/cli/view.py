"""``fusionnet view``: a local Neuroglancer viewer of EM, probabilities and a segmentation."""

HELP = "Look at a volume, its membrane probabilities and segmentation in a local Neuroglancer."

DESCRIPTION = """\
Start a local Neuroglancer viewer (the client is bundled in the 'neuroglancer'
package; nothing is fetched from the internet) with the raw volume, the membrane
probability map (--pred, a red overlay) and the segmentation (--seg, with 3D meshes
of the selected segments), at the given voxel size. Prints the URL to open in a
browser and serves until Ctrl-C. With --screenshot FILE it renders the view in
headless Chromium (WebGL in software), writes a PNG and exits.
Needs: pip install 'fusionnet-tf[viewer]' (and Chromium + chromedriver for
--screenshot).
"""

EPILOG = """\
examples:
  fusionnet view em.tif --pred membranes.tif --seg neurons.tif --voxel-size 30,6,6
  fusionnet view em.zarr --seg neurons.zarr --port 9000
  fusionnet view em.tif --seg neurons.tif --segments 12,40 --layout 3d --screenshot neurons.png
"""


def add_parser(subparsers):
    """Register ``view``; argparse only."""
    import argparse

    parser = subparsers.add_parser("view", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", metavar="IMAGE",
                        help="Raw EM volume (Z, Y, X): 'em.tif', a folder of slices, "
                             "'em.h5:/key', 'em.zarr[:/key]', 'em.ome.zarr'.")
    parser.add_argument("--pred", default=None,
                        help="Membrane probability volume of the same shape (float 0-1 or "
                             "uint8 0-255).")
    parser.add_argument("--seg", default=None,
                        help="Integer label volume of the same shape (0 = background).")
    parser.add_argument("--voxel-size", default=None, metavar="Z,Y,X",
                        help="Voxel size z,y,x in nm (default: the OME-Zarr metadata of "
                             "IMAGE, else --seg, else --pred; else 1,1,1; SNEMI3D: 30,6,6).")
    parser.add_argument("--port", type=int, default=0,
                        help="Port of the local server (default: 0 = any free port).")
    parser.add_argument("--bind-address", default="127.0.0.1",
                        help="Address the server listens on (default: 127.0.0.1, this "
                             "machine only).")
    parser.add_argument("--segments", default="",
                        help="Comma-separated ids to select at start (their meshes show in "
                             "the 3D panel).")
    parser.add_argument("--layout", default="xy-3d",
                        choices=("xy", "3d", "xy-3d", "4panel"),
                        help="Panels (default: xy-3d).")
    parser.add_argument("--screenshot", default=None, metavar="FILE",
                        help="Write a PNG of the view (headless Chromium) and exit.")
    parser.add_argument("--size", default="1024,768",
                        help="Screenshot width,height in pixels (default: 1024,768).")
    parser.set_defaults(run=run)


def parse_ids(text):
    """``"3,17"`` -> ``[3, 17]``; ValueError naming --segments otherwise."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        ids = [-1]
    if any(i < 1 for i in ids):
        raise ValueError(f"--segments must be comma-separated positive ids; received {text!r}")
    return ids


def parse_size(text):
    """``"1024,768"`` -> ``(1024, 768)``; ValueError naming --size otherwise."""
    try:
        width, height = (int(part) for part in text.split(","))
    except ValueError:
        width = height = 0
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise ValueError(f"--size must be width,height in pixels (16-8192); received {text!r}")
    return width, height


def open_volumes(args):
    """Open IMAGE, --pred and --seg lazily and check they agree; returns the three (or None)."""
    from fusionnet_tf.volumes.precomputed import image_dtype, label_dtype
    from fusionnet_tf.volumes.storage import open_any_volume

    image, _ = open_any_volume(args.image, f"IMAGE {args.image}")
    image_dtype(image.dtype, f"IMAGE {args.image}")
    opened = {}
    for option, spec in (("--pred", args.pred), ("--seg", args.seg)):
        if spec is None:
            continue
        array, _ = open_any_volume(spec, f"{option} {spec}")
        if tuple(array.shape) != tuple(image.shape):
            raise ValueError(f"{option} {spec} has shape {tuple(array.shape)} but IMAGE has "
                             f"shape {tuple(image.shape)}; they must be the same volume")
        opened[option] = array
    if "--seg" in opened:
        label_dtype(opened["--seg"].dtype, f"--seg {args.seg}")
    if "--pred" in opened:
        image_dtype(opened["--pred"].dtype, f"--pred {args.pred}")
    return image, opened.get("--pred"), opened.get("--seg")


def run(args):
    """Check everything (the port first), start the viewer; serve or screenshot. Returns 0."""
    import sys
    import time

    from fusionnet_tf.io.ome_zarr import voxel_size_nm
    from fusionnet_tf.volumes.viewer import (build_viewer, check_port_free, import_neuroglancer,
                                             take_screenshot)

    check_port_free(args.port, args.bind_address)
    voxel_size, _ = voxel_size_nm(args.voxel_size, (args.image, args.seg, args.pred))
    segments = parse_ids(args.segments)
    size = parse_size(args.size)
    if args.screenshot is not None:
        from fusionnet_tf.io.outputs import check_output_path

        check_output_path(args.screenshot, f"--screenshot {args.screenshot}")
    import_neuroglancer()
    image, pred, seg = open_volumes(args)
    if segments and seg is None:
        raise ValueError("--segments needs --seg")
    viewer = build_viewer(image, pred, seg, voxel_size, port=args.port,
                          address=args.bind_address, segments=segments, layout=args.layout)
    url = viewer.get_viewer_url()
    if args.screenshot is not None:
        from fusionnet_tf.cli import CommandError

        try:
            take_screenshot(viewer, args.screenshot, size)
        except TimeoutError as exc:
            raise CommandError(f"--screenshot {args.screenshot}: {exc}") from None
        print(f"view: wrote {args.screenshot} ({size[0]}x{size[1]}) from {url}", file=sys.stderr)
        return 0
    print(url, flush=True)
    print("view: serving; press Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("view: stopped", file=sys.stderr)
    return 0
