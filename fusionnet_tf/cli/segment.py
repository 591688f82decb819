"""``fusionnet segment``: neuron label images from membrane probability maps."""

HELP = "Segment neurons: membrane probability map -> label image (watershed + agglomeration)."

DESCRIPTION = """\
Turn a membrane probability map (what 'fusionnet predict' writes) into a label
image in which every cell has its own id: seeded watershed on the membrane map,
then agglomeration of segments across weak boundaries and of small segments.
With --method edges a learned edge classifier ('fusionnet train-edges') decides
which fragments to merge instead of a boundary threshold (2D slices).
Without --params the parameters tuned for the shipped model are used (tune your
own with 'fusionnet tune-segment'). Every pixel belongs to a segment unless
--keep-boundaries is given. An affinity file (C, Z, Y, X) whose metadata says
"kind": "affinities" is segmented into 3D neurons instead (--method).
"""

EPILOG = """\
examples:
  fusionnet segment membranes.tif -o neurons.tif
  fusionnet segment membranes.tif -o neurons.tif --image stack.tif --overlay overlays
  fusionnet segment membranes.h5:/prediction -o neurons.h5:/segmentation --mode 3d
  fusionnet segment membranes.tif -o neurons.zarr --params params.json --set min_size=100
  fusionnet segment affinities.zarr -o neurons.h5 --method mws     (3D, from affinities)
  fusionnet segment membranes.tif -o neurons.tif --method edges --classifier edges.npz
      (merges decided by a classifier trained with 'fusionnet train-edges')
"""


def add_parser(subparsers):
    """Register ``segment``; argparse only."""
    import argparse

    from fusionnet_tf.choices import PRED_CONVENTIONS

    parser = subparsers.add_parser("segment", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pred", metavar="PRED",
                        help="Membrane probability map (N, H, W): TIFF, file.h5:/key, zarr, PNG "
                             "or folder; float in [0, 1] or uint8 0-255 (1 = membrane).")
    parser.add_argument("-o", "--output", required=True, metavar="LABELS",
                        help="Label image: .tif (uint32), .h5[:/key] (key default: "
                             "segmentation) or .zarr (uint64; an existing store is replaced "
                             "only if 'fusionnet segment' wrote it). Written atomically.")
    add_segment_arguments(parser)
    parser.add_argument("--pred-convention", choices=PRED_CONVENTIONS, default="membrane",
                        help="membrane: high = membrane; isbi: high = cell interior "
                             "(predict --isbi) (default: membrane).")
    parser.add_argument("--image", metavar="IMAGE", default=None,
                        help="The EM image the map was predicted from, for --overlay.")
    parser.add_argument("--overlay", metavar="DIR", default=None,
                        help="Also write the segments in random colours over --image, one PNG "
                             "per slice, into this folder (new, empty or an earlier overlay "
                             "folder, which is refreshed) (default: none).")
    parser.add_argument("--quiet", action="store_true",
                        help="No progress bar (default: progress bar over slices on stderr).")
    add_method_argument(parser, edges=True)
    parser.add_argument("--classifier", metavar="FILE", default=None,
                        help="--method edges: the edge classifier (.npz) from 'fusionnet "
                             "train-edges'; its fragment parameters are used unless --params "
                             "is given (--set applies on top).")
    parser.add_argument("--merge-probability", type=float, default=None, metavar="P",
                        help="--method edges: merge while the best edge's p(merge) is at least "
                             "P (default: the classifier file's, 0.5).")
    from fusionnet_tf.cli.slices import add_slices_argument
    from fusionnet_tf.io import ngff

    add_slices_argument(parser, "PRED (and --image; LABELS holds only those)")
    ngff.add_level_argument(parser)
    ngff.add_arguments(parser, labels=True, formats=False)
    parser.set_defaults(run=run)


def add_method_argument(parser, edges=False):
    """``--method`` for affinity files (``segment`` and ``tune-segment``), and with ``edges``
    the learned edge classifier for membrane maps (``segment``)."""
    from fusionnet_tf.segmentation.affinity_params import METHODS

    text = ("Affinity files only (recognised by their metadata): agglomeration (watershed "
            "fragments merged on mean affinity) or mws (mutex watershed on all offsets) "
            "(default: agglomeration, or the --params file's).")
    if edges:
        text += (" Membrane maps: edges merges the watershed fragments by a learned edge "
                 "classifier (needs --classifier; --mode 2d) instead of the boundary "
                 "threshold (default: the threshold recipe).")
    parser.add_argument("--method", choices=METHODS + (("edges",) if edges else ()),
                        default=None, help=text)


def add_segment_arguments(parser, keep_boundaries=True):
    """Options shared by ``segment``, ``segment-volume`` and ``predict --segment``.

    Adds ``--mode``, ``--params``, ``--set`` and (unless ``keep_boundaries``
    is False) ``--keep-boundaries``.
    """
    from fusionnet_tf.segmentation.params import MODES

    group = parser.add_argument_group("segmentation")
    group.add_argument("--mode", choices=MODES, default="2d",
                       help="2d: each slice on its own (serial-section EM such as ISBI 2012); "
                            "3d: one id per cell through the stack (a 3D watershed for "
                            "anisotropy < 3, else 2D sections linked by overlap) (default: 2d).")
    group.add_argument("--params", metavar="FILE|NAME", default=None,
                       help="JSON parameters from 'fusionnet tune-segment', or a shipped "
                            "model's name (isbi2012, snemi3d) for the parameters tuned for it "
                            "(default: those of the model that predicted PRED if it is a "
                            "shipped one, else isbi2012's for membrane maps and the "
                            "AffinityParams defaults for affinities).")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="Override one parameter, e.g. --set merge_threshold=0.6 "
                            "(repeatable; keys: see SegmentParams).")
    if keep_boundaries:
        group.add_argument("--keep-boundaries", action="store_true",
                           help="Give pixels with membrane probability >= 0.5 label 0 "
                                "(default: every pixel belongs to a segment).")


def resolve_params(args, cls=None, default=None):
    """``SegmentParams`` from ``--params`` (or the shipped ones) and ``--set`` overrides.

    With ``cls`` (e.g. ``AffinityParams``) the file holds ``cls`` parameters
    and the defaults are ``default`` or ``cls()``; without ``cls`` the
    defaults are ``default`` or the shipped ``default_params()``. ``--params NAME`` reads the
    parameters shipped with the pretrained model NAME (``fusionnet_tf.pretrained``).

    Raises:
        ValueError: unknown keys or bad values, naming them.
    """
    import json

    from fusionnet_tf.segmentation import SegmentParams, default_params, load_params

    from fusionnet_tf.pretrained import is_model_name, pretrained_params_path

    source = args.params
    if source is not None and is_model_name(source):
        source = pretrained_params_path(source)
    if cls is not None:
        params = load_params(source, cls) if source else (default or cls())
    else:
        params = load_params(source) if source else (default or default_params())
    if not args.set:
        return params
    values = params.to_dict()
    for item in args.set:
        key, separator, text = item.partition("=")
        if not separator:
            raise ValueError(f"--set {item}: expected KEY=VALUE")
        try:
            values[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            values[key.strip()] = text  # plain strings such as quantile
    return (cls or SegmentParams).from_dict(values, source="--set")


def check_inputs_outputs(inputs, output, overlay=None, option="--output",
                         overlay_option="--overlay"):
    """Refuse an output that would overwrite an input, and an overlay folder the guard refuses.

    Args:
        inputs: list of ``(option, spec)`` that must not be overwritten
            (``spec`` None is skipped).
        output: the label output spec, given as ``option``.
        overlay: optional overlay folder to check, given as ``overlay_option``.

    Raises:
        ValueError: naming the options and paths (see
            ``fusionnet_tf.io.outputs.check_not_input``).
    """
    from fusionnet_tf.inference.writers import check_prediction_output
    from fusionnet_tf.io.outputs import check_not_input
    from fusionnet_tf.segmentation.io import DEFAULT_HDF5_KEY

    for name, spec in inputs:
        if spec:
            check_not_input(output, spec, option, name, default_key=DEFAULT_HDF5_KEY)
    if not overlay:
        return
    for name, spec in inputs + [(option, output)]:
        if spec:
            check_not_input(overlay, spec, overlay_option, name)
    check_prediction_output(overlay, overlay_option)


def segment_and_write(membrane, output, args, params, source, images=None, overlay=None,
                      classifier=None):
    """Segment ``membrane`` with ``args.mode``/``args.keep_boundaries``; write ``output``.

    Also writes label overlays into the folder ``overlay`` (needs ``images``)
    and prints one line on stderr. With ``classifier`` (an
    ``EdgeClassifier``) it decides the merges (``--method edges``).
    """
    import sys
    import time

    from fusionnet_tf.segmentation import segment
    from fusionnet_tf.segmentation.io import (stored_label_dtype, write_label_overlays,
                                              write_labels)

    began = time.perf_counter()
    labels, max_id = segment(membrane, params, mode=args.mode,
                             keep_boundaries=args.keep_boundaries, progress=not args.quiet,
                             classifier=classifier)
    seconds = time.perf_counter() - began
    metadata = {"source": str(source), "mode": args.mode, "params": params.to_dict(),
                "keep_boundaries": bool(args.keep_boundaries)}
    if classifier is not None:
        metadata.update(method="edges", classifier=str(getattr(args, "classifier", None)),
                        merge_probability=classifier.threshold)
    plan = None
    from fusionnet_tf.io import ome_zarr

    if ome_zarr.is_ome_zarr_name(output):
        plan = ome_zarr.output_plan_for(args, "labels", "segment", source, output)
    write_labels(output, labels, metadata, ome_plan=plan)
    if overlay is not None:
        write_label_overlays(overlay, images, labels)
    print(f"wrote {output}: {labels.shape} {stored_label_dtype(output, max_id)}, {max_id} segments "
          f"({seconds / len(labels):.2f} s per slice)", file=sys.stderr)


def run(args):
    """Read PRED, segment, write LABELS. Returns 0."""
    import sys

    from fusionnet_tf.data.affinity_io import affinity_metadata
    from fusionnet_tf.io import ome_zarr
    from fusionnet_tf.segmentation.io import (check_label_output, raw_image_warning,
                                              read_membrane)

    args.pred = ome_zarr.level_spec(args.pred, args.level)
    ome_zarr.check_cli_options(args, args.output, args.pred, "labels", "segment")

    if affinity_metadata(args.pred) is not None:
        from fusionnet_tf.cli.affinity_segment import run_segment

        if args.method == "edges" or args.classifier is not None:
            raise ValueError(f"--method edges and --classifier apply to 2D membrane maps; PRED "
                             f"{args.pred} holds 3D affinities (use --method agglomeration "
                             f"or mws)")
        if args.slices is not None:
            raise ValueError(f"--slices applies to 2D membrane maps; PRED {args.pred} holds "
                             "3D affinities (segmented as one volume)")
        return run_segment(args)
    if args.method not in (None, "edges"):
        raise ValueError(f"--method applies to affinity files; PRED {args.pred} is not one "
                         f"(no \"kind\": \"affinities\" metadata); membrane maps take "
                         f"--method edges only")
    classifier = edge_classifier_of(args)
    if (args.image is None) != (args.overlay is None):
        raise ValueError("--overlay needs --image (the EM image), and --image is only used "
                         "with --overlay")
    check_inputs_outputs([("PRED", args.pred), ("--image", args.image),
                          ("--classifier", args.classifier)], args.output,
                         args.overlay)
    from fusionnet_tf.cli.slices import select_slices

    check_label_output(args.output, "--output")
    params = resolve_params(args, default=classifier.params if classifier else None)
    membrane = select_slices(read_membrane(args.pred, args.pred_convention), args.slices)
    warning = raw_image_warning(membrane, args.pred)
    if warning:
        print(f"fusionnet segment: warning: {warning}", file=sys.stderr)
    images = None
    if args.image is not None:
        from fusionnet_tf.data import normalize, read_stack

        images = normalize(select_slices(read_stack(args.image), args.slices))
        if images.shape != membrane.shape:
            raise ValueError(f"--image {args.image} has shape {images.shape} but PRED "
                             f"{args.pred} has {membrane.shape}")
    segment_and_write(membrane, args.output, args, params, args.pred, images=images,
                      overlay=args.overlay, classifier=classifier)
    return 0


def edge_classifier_of(args):
    """The ``EdgeClassifier`` of ``--method edges --classifier FILE``, or None without it.

    Raises:
        FileNotFoundError / ValueError: one line: --classifier missing or not
            a classifier file, --classifier or --merge-probability without
            --method edges, --mode 3d, P outside [0, 1].
    """
    if args.method != "edges":
        for option, value in (("--classifier", args.classifier),
                              ("--merge-probability", args.merge_probability)):
            if value is not None:
                raise ValueError(f"{option} applies to --method edges (the learned edge "
                                 f"classifier); add --method edges")
        return None
    if args.classifier is None:
        raise ValueError("--method edges needs --classifier FILE (train one with 'fusionnet "
                         "train-edges')")
    if args.mode != "2d":
        raise ValueError(f"--method edges segments 2D slices; --mode {args.mode} is not "
                         f"supported with it (use --mode 2d)")
    if args.merge_probability is not None:
        from fusionnet_tf.checks import check_range

        check_range("--merge-probability", args.merge_probability, 0, 1)
    from fusionnet_tf.segmentation.edge_classifier import load_edge_classifier

    classifier = load_edge_classifier(args.classifier, "--classifier")
    return classifier.with_threshold(args.merge_probability)
