"""``fusionnet evaluate``: ISBI 2012 and segmentation scores.

``--pred``: compares a probability map (``fusionnet predict`` output: float in
[0, 1] or uint8 0-255) with binary labels, sweeping thresholds 0.0..1.0 like
the official Fiji script (V_rand, V_info, pixel error). ``--seg``: scores a
label image (``fusionnet segment`` output) as it is: V_rand, V_info, adapted
Rand error, VOI split/merge and the CREMI score. Prints a table or, with
``--json``, one JSON object.
"""

HELP = ("Score a probability map (ISBI 2012 V_rand, V_info, pixel error) or a label image "
        "(also adapted Rand error, VOI, CREMI score) against labels.")


def add_parser(subparsers):
    """Register ``evaluate``; argparse only."""
    parser = subparsers.add_parser(
        "evaluate", help=HELP, description=HELP,
        epilog="Examples: fusionnet evaluate --labels train-labels.tif --pred pred.tif --json\n"
               "          fusionnet evaluate --labels train-labels.tif --seg neurons.tif",
    )
    parser.add_argument("--labels", required=True, metavar="LABELS",
                        help="Binary label stack (TIFF, image, folder or file.h5:/key).")
    scored = parser.add_mutually_exclusive_group(required=True)
    scored.add_argument("--pred", metavar="PRED",
                        help="Probability map with the labels' (N, H, W) shape: float in [0, 1] "
                             "or uint8 0-255.")
    scored.add_argument("--seg", metavar="SEGMENTS",
                        help="Label image with the labels' (N, H, W) shape (integer ids, e.g. "
                             "fusionnet segment's output: TIFF, file.h5:/key or zarr); scored "
                             "per slice as in ISBI 2012, without a threshold sweep.")
    from fusionnet_tf.choices import LABEL_CONVENTIONS, PRED_CONVENTIONS

    parser.add_argument("--label-convention", choices=LABEL_CONVENTIONS, default="isbi",
                        help="isbi: 0 = membrane, nonzero = interior; membrane: nonzero = "
                             "membrane; instance: cell ids, 1-px boundaries where the id "
                             "changes or is 0 (default: isbi).")
    parser.add_argument("--pred-convention", choices=PRED_CONVENTIONS, default="membrane",
                        help="membrane: high = membrane (fusionnet predict's default); isbi: "
                             "high = cell interior (predict --isbi) (default: membrane).")
    parser.add_argument("--label-threshold", type=float, default=None,
                        help="Binarize non-binary labels as label > T (default: labels must "
                             "have two values).")
    from fusionnet_tf.cli.slices import add_slices_argument

    add_slices_argument(parser, "LABELS, and of PRED/SEGMENTS when they hold the whole stack "
                                "(one that holds only the selected slices is used as it is)")
    parser.add_argument("--json", action="store_true",
                        help="Print one JSON object instead of a table (default: table).")
    parser.add_argument("--volume", action="store_true",
                        help="With --seg: whole-volume 3D scores (SNEMI3D/CREMI): --labels are "
                             "ground-truth ids shared across sections, 0 not counted; one "
                             "contingency table over the volume (default: per slice).")
    add_gt_components_argument(parser)
    parser.set_defaults(run=run)


GT_COMPONENTS_HELP = (
    "Score against the ground truth's connected pieces inside this volume: each "
    "face-connected piece of an id becomes its own id. Use it when LABELS are cut out of a "
    "larger labelled volume (a crop, SNEMI3D sections 60-74), whose ids may join pieces "
    "outside it that no segmentation of the cut-out can join; the raw ids count each such "
    "piece as a split (default: the raw ids, as the SNEMI3D and CREMI scripts score).")


def add_gt_components_argument(parser):
    """``--gt-components`` (evaluate --volume, tune-segment on affinities); argparse only."""
    parser.add_argument("--gt-components", action="store_true", help=GT_COMPONENTS_HELP)


def scored_ground_truth(labels, gt_components):
    """The ids scored against: ``labels`` or, with ``--gt-components``, its connected pieces."""
    from fusionnet_tf.metrics import ground_truth_components

    return ground_truth_components(labels) if gt_components else labels


VOLUME_ROWS = (("adapted Rand error", "adapted_rand_error"), ("Rand precision", "rand_precision"),
               ("Rand recall", "rand_recall"), ("VOI split", "voi_split"),
               ("VOI merge", "voi_merge"), ("CREMI score", "cremi_score"))


def format_volume_table(scores, shape):
    """Readable table of ``metrics.volume_scores`` output for a (Z, Y, X) volume."""
    truth = ("connected pieces of the ground-truth ids" if scores.get("ground_truth") ==
             "components" else "ground-truth ids")
    lines = [f"3D scores over a {shape[0]}x{shape[1]}x{shape[2]} volume against the {truth} "
             "(id 0 not counted; VOI in bits)", f"{'metric':<20} {'score':>8}"]
    lines += [f"{title:<20} {scores[key]:>8.4f}" for title, key in VOLUME_ROWS]
    return "\n".join(lines)


def _refuse_gappy_volume(spec, count):
    """3D scores need adjacent sections: refuse a ``--slices`` spec with gaps (e.g. 0,2,5-7)."""
    if spec is None:
        return
    from fusionnet_tf.checks import parse_slices

    index = list(parse_slices(spec, count, key="--slices"))
    if any(b != a + 1 for a, b in zip(index, index[1:])):
        raise ValueError(f"--slices {spec}: --volume scores one 3D block, give a contiguous "
                         "range such as 60-74")


def run_volume(args):
    """``--volume``: whole-volume scores of --seg against ground-truth ids (``--slices``: a
    contiguous block of sections of both, or of the labels when --seg holds only those). Returns 0.
    """
    from fusionnet_tf.cli.slices import select_matching
    from fusionnet_tf.metrics import volume_scores
    from fusionnet_tf.segmentation.io import read_segments

    if args.seg is None:
        raise ValueError("--volume scores a label image: give --seg SEGMENTS (not --pred)")
    labels = read_segments(args.labels, "--labels")
    if len(labels) < 2:
        raise ValueError(f"--volume needs a 3D stack; --labels {args.labels} has a single "
                         f"section {labels.shape} (score it without --volume)")
    segments = read_segments(args.seg, "--seg")
    _refuse_gappy_volume(args.slices, len(labels))
    labels, segments = select_matching(labels, segments, args.slices)
    _check_shapes(args, labels, segments, "--seg", args.seg)
    scores = volume_scores(scored_ground_truth(labels, args.gt_components), segments)
    scores["ground_truth"] = "components" if args.gt_components else "ids"
    return _report(args, scores, labels.shape, format_volume_table)


def format_table(scores, shape):
    """Readable multi-line table of ``isbi_scores`` output for an (N, H, W) stack."""
    rows = [("V_rand", "v_rand"), ("V_info", "v_info"), ("pixel error", "pixel_error")]
    lines = [f"ISBI 2012 scores over {shape[0]} slice(s) of {shape[1]}x{shape[2]} "
             "(best over thresholds 0.0..1.0 on interior probability)",
             f"{'metric':<12} {'score':>8} {'threshold':>10}"]
    for title, key in rows:
        lines.append(f"{title:<12} {scores[key]:>8.4f} {scores[key + '_threshold']:>10.1f}")
    return "\n".join(lines)


SEGMENTATION_ROWS = (("V_rand", "v_rand"), ("V_info", "v_info"),
                     ("adapted Rand error", "adapted_rand_error"),
                     ("VOI split", "voi_split"), ("VOI merge", "voi_merge"),
                     ("CREMI score", "cremi_score"))


def format_segmentation_table(scores, shape):
    """Readable table of ``segmentation_scores_report`` output for an (N, H, W) stack."""
    lines = [f"Segmentation scores over {shape[0]} slice(s) of {shape[1]}x{shape[2]} "
             "(2D per slice, pooled; VOI in bits)",
             f"{'metric':<20} {'score':>8}"]
    lines += [f"{title:<20} {scores[key]:>8.4f}" for title, key in SEGMENTATION_ROWS]
    return "\n".join(lines)


def _check_shapes(args, labels, other, option, spec):
    if labels.shape != other.shape:
        raise ValueError(f"labels and {option} differ in shape: --labels {args.labels} is "
                         f"{labels.shape}, {option} {spec} is {other.shape}")


def _report(args, scores, shape, format_function):
    """Print ``scores`` as one JSON object (``--json``) or a table. Returns 0."""
    import json

    if args.json:
        print(json.dumps(dict(scores, slices=int(shape[0]))))
    else:
        print(format_function(scores, shape))
    return 0


def run(args):
    """Read labels and prediction (or segmentation), print the scores. Returns 0."""
    from fusionnet_tf.cli.slices import select_matching
    from fusionnet_tf.data import read_labels

    if args.volume:
        return run_volume(args)
    if args.gt_components:
        raise ValueError("--gt-components applies to 3D scores: add --volume (per-slice scores "
                         "already split the ground truth into each slice's cells)")
    labels = read_labels(args.labels, args.label_convention, threshold=args.label_threshold)
    if args.seg is not None:
        from fusionnet_tf.metrics import segmentation_scores_report
        from fusionnet_tf.segmentation.io import read_segments

        segments = read_segments(args.seg, "--seg")
        labels, segments = select_matching(labels, segments, args.slices)
        _check_shapes(args, labels, segments, "--seg", args.seg)
        return _report(args, segmentation_scores_report(labels, segments), labels.shape,
                       format_segmentation_table)
    from fusionnet_tf.inference.writers import read_probability_map
    from fusionnet_tf.metrics import isbi_scores

    membrane = read_probability_map(args.pred, args.pred_convention)
    labels, membrane = select_matching(labels, membrane, args.slices)
    _check_shapes(args, labels, membrane, "--pred", args.pred)
    return _report(args, isbi_scores(membrane, labels), labels.shape, format_table)
