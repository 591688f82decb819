"""``fusionnet evaluate``: ISBI 2012 V_rand, V_info and pixel error.

Compares a probability map (``fusionnet predict`` output: float in [0, 1] or
uint8 0-255) with binary labels, sweeping thresholds 0.0..1.0 like the
official Fiji script, and prints a table or, with ``--json``, one JSON object.
"""

HELP = "Score a probability map against labels (ISBI 2012 V_rand, V_info, pixel error)."


def add_parser(subparsers):
    """Register ``evaluate``; argparse only."""
    parser = subparsers.add_parser(
        "evaluate", help=HELP, description=HELP,
        epilog="Example: fusionnet evaluate --labels train-labels.tif --pred pred.tif --json",
    )
    parser.add_argument("--labels", required=True, metavar="LABELS",
                        help="Binary label stack (TIFF, image, folder or file.h5:/key).")
    parser.add_argument("--pred", required=True, metavar="PRED",
                        help="Probability map with the labels' (N, H, W) shape: float in [0, 1] "
                             "or uint8 0-255.")
    parser.add_argument("--label-convention", choices=("isbi", "membrane"), default="isbi",
                        help="isbi: 0 = membrane, nonzero = interior; membrane: nonzero = "
                             "membrane (default: isbi).")
    parser.add_argument("--pred-convention", choices=("membrane", "isbi"), default="membrane",
                        help="membrane: high = membrane (fusionnet predict's default); isbi: "
                             "high = cell interior (predict --isbi) (default: membrane).")
    parser.add_argument("--label-threshold", type=float, default=None,
                        help="Binarize non-binary labels as label > T (default: labels must "
                             "have two values).")
    parser.add_argument("--json", action="store_true",
                        help="Print one JSON object instead of a table (default: table).")
    parser.set_defaults(run=run)


def format_table(scores, shape):
    """Readable multi-line table of ``isbi_scores`` output for an (N, H, W) stack."""
    rows = [("V_rand", "v_rand"), ("V_info", "v_info"), ("pixel error", "pixel_error")]
    lines = [f"ISBI 2012 scores over {shape[0]} slice(s) of {shape[1]}x{shape[2]} "
             "(best over thresholds 0.0..1.0 on interior probability)",
             f"{'metric':<12} {'score':>8} {'threshold':>10}"]
    for title, key in rows:
        lines.append(f"{title:<12} {scores[key]:>8.4f} {scores[key + '_threshold']:>10.1f}")
    return "\n".join(lines)


def run(args):
    """Read labels and prediction, print the scores. Returns 0."""
    import json

    from fusionnet_tf.data import read_labels
    from fusionnet_tf.inference.writers import read_probability_map
    from fusionnet_tf.metrics import isbi_scores

    labels = read_labels(args.labels, args.label_convention, threshold=args.label_threshold)
    membrane = read_probability_map(args.pred, args.pred_convention)
    if labels.shape != membrane.shape:
        raise ValueError(
            f"labels and prediction differ in shape: --labels {args.labels} is {labels.shape}, "
            f"--pred {args.pred} is {membrane.shape}"
        )
    scores = isbi_scores(membrane, labels)
    if args.json:
        print(json.dumps(dict(scores, slices=int(labels.shape[0]))))
    else:
        print(format_table(scores, labels.shape))
    return 0
