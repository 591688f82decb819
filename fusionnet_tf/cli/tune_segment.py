"""``fusionnet tune-segment``: search the segmentation parameters on labelled slices."""

HELP = "Tune the segmentation parameters for the best V_rand on labelled slices."

DESCRIPTION = """\
Search the post-processing parameters of 'fusionnet segment' (seeds, smoothing,
agglomeration threshold and statistic, minimum sizes) for the best ISBI 2012
V_rand of the label image on slices with ground truth: a small adaptive grid
search (random grid points, then one parameter at a time from the best).
Prints a table of the best settings tried and writes the best as JSON for
'fusionnet segment --params'. Tune on validation slices, not on the slices you
report scores for.

With --cv K the slices are split into K contiguous folds: for each fold the
search runs on the other K-1 folds and its winner is scored on the held-out
fold. It prints each fold's held-out score and the pooled held-out score (the
figures to expect on new slices) and writes the setting that scores best by its
WORST fold among all settings tried (a flat optimum beats one that wins on most
slices and fails on some). The JSON records the held-out figures, not
in-sample ones.
"""

EPILOG = """\
example:
  fusionnet tune-segment --pred val_membranes.tif --labels val_labels.tif -o params.json --budget 80
  fusionnet tune-segment --pred oof_membranes.tif --labels train-labels.tif -o params.json --cv 5
  fusionnet tune-segment --pred pred.tif --labels train-labels.tif --slices 20-24 -o params.json
"""


def add_parser(subparsers):
    """Register ``tune-segment``; argparse only."""
    import argparse

    from fusionnet_tf.choices import LABEL_CONVENTIONS, PRED_CONVENTIONS
    from fusionnet_tf.segmentation.params import MODES

    parser = subparsers.add_parser("tune-segment", help=HELP, description=DESCRIPTION,
                                   epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, metavar="PRED",
                        help="Membrane probability map (TIFF, file.h5:/key, zarr; float in "
                             "[0, 1] or uint8).")
    parser.add_argument("--labels", required=True, metavar="LABELS",
                        help="Binary ground truth of the same (N, H, W) shape.")
    parser.add_argument("-o", "--output", required=True, metavar="PARAMS.json",
                        help="Where to write the best parameters (JSON, atomically).")
    parser.add_argument("--budget", type=int, default=60,
                        help="Number of settings to score (default: 60; about 1 s each for "
                             "five 512x512 slices).")
    parser.add_argument("--mode", choices=MODES, default="2d",
                        help="Segmentation mode to tune for (default: 2d).")
    parser.add_argument("--start", metavar="FILE", default=None,
                        help="Parameters to start from (default: the shipped model's).")
    parser.add_argument("--label-convention", choices=LABEL_CONVENTIONS, default="isbi",
                        help="isbi: 0 = membrane; membrane: nonzero = membrane; instance: "
                             "cell ids, 1-px boundaries where the id changes or is 0 "
                             "(default: isbi).")
    parser.add_argument("--pred-convention", choices=PRED_CONVENTIONS, default="membrane",
                        help="membrane: high = membrane; isbi: high = cell interior "
                             "(predict --isbi) (default: membrane).")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of the random part of the search (default: 0).")
    from fusionnet_tf.cli.segment import add_method_argument

    add_method_argument(parser)  # affinity files: --labels are then 3D ids, scored in 3D
    parser.add_argument("--cv", type=int, default=None, metavar="K",
                        help="Cross-validate over K contiguous folds of slices (K >= 2; "
                             "--budget settings per fold) and write the setting with the "
                             "best worst-fold V_rand (default: no cross-validation; tune "
                             "and report in-sample).")
    from fusionnet_tf.cli.slices import add_slices_argument

    add_slices_argument(parser, "--labels, and of --pred when it holds the whole stack")
    from fusionnet_tf.cli.evaluate import add_gt_components_argument

    add_gt_components_argument(parser)  # affinity files only: 3D ids
    parser.set_defaults(run=run)


def check_params_output(args):
    """Fail before tuning if ``--output`` is not a writable new .json next to the inputs."""
    from fusionnet_tf.cli.segment import check_inputs_outputs
    from fusionnet_tf.io.outputs import check_output_folder

    if not str(args.output).lower().endswith(".json"):
        raise ValueError(f"--output {args.output}: parameters are written as a .json file")
    check_output_folder(args.output, f"--output {args.output}")
    check_inputs_outputs([("--pred", args.pred), ("--labels", args.labels),
                          ("--start", args.start)], args.output)


def run(args):
    """Tune, print the table, write the JSON. Returns 0."""
    import sys

    from tqdm import tqdm

    from fusionnet_tf.cli.slices import select_matching
    from fusionnet_tf.data import read_labels
    from fusionnet_tf.segmentation import default_params, load_params, save_params
    from fusionnet_tf.segmentation.io import read_membrane
    from fusionnet_tf.segmentation.tune import format_rows, tune

    if args.budget < 1:
        raise ValueError(f"--budget must be >= 1; received {args.budget}")
    if args.cv is not None and args.cv < 2:
        raise ValueError(f"--cv must be >= 2 folds; received {args.cv}")
    check_params_output(args)
    from fusionnet_tf.data.affinity_io import affinity_metadata

    if affinity_metadata(args.pred) is not None:
        from fusionnet_tf.cli.affinity_segment import run_tune

        for option, value in (("--cv", args.cv), ("--slices", args.slices)):
            if value is not None:
                raise ValueError(f"{option} applies to 2D membrane maps; --pred {args.pred} "
                                 "holds 3D affinities (tuned on the whole volume)")
        return run_tune(args)
    for option, value in (("--method", args.method), ("--gt-components", args.gt_components)):
        if value:
            raise ValueError(f"{option} applies to affinity files; --pred {args.pred} is not one")
    start = load_params(args.start) if args.start else default_params()
    labels = read_labels(args.labels, args.label_convention)
    membrane = read_membrane(args.pred, args.pred_convention)
    labels, membrane = select_matching(labels, membrane, args.slices)
    if labels.shape != membrane.shape:
        raise ValueError(f"--labels {args.labels} has shape {labels.shape} but --pred "
                         f"{args.pred} has {membrane.shape}")
    if args.cv is not None:
        return run_cross_validation(args, membrane, labels, start)
    with tqdm(total=args.budget, desc="tune-segment", unit="setting", file=sys.stderr) as bar:
        best, rows = tune(membrane, labels, budget=args.budget, mode=args.mode, start=start,
                          seed=args.seed, callback=lambda row: bar.update(1))
    print(format_rows(rows))
    top = max(rows, key=lambda row: (row["v_rand"], row["v_info"]))
    save_params(args.output, best, extra={
        "v_rand": top["v_rand"], "v_info": top["v_info"], "mode": args.mode,
        "pred": str(args.pred), "labels": str(args.labels), "slices": int(len(labels)),
        "slice_spec": args.slices, "settings_tried": len(rows)})
    print(f"wrote {args.output}: V_rand {top['v_rand']:.4f}, V_info {top['v_info']:.4f}",
          file=sys.stderr)
    return 0


def run_cross_validation(args, membrane, labels, start):
    """``--cv K``: cross-validated tuning; print the held-out scores, write the choice. Returns 0."""
    import sys

    from tqdm import tqdm

    from fusionnet_tf.segmentation import save_params
    from fusionnet_tf.segmentation.tune import CV_RULE_TEXT, cross_validate, format_cv_report

    if args.cv > len(labels):
        raise ValueError(f"--cv {args.cv}: more folds than the {len(labels)} slices of "
                         f"--labels {args.labels}")
    with tqdm(total=args.budget * args.cv, desc="tune-segment --cv", unit="setting",
              file=sys.stderr) as bar:
        best, report = cross_validate(membrane, labels, folds=args.cv, budget=args.budget,
                                      mode=args.mode, start=start, seed=args.seed,
                                      callback=lambda row: bar.update(1))
    print(format_cv_report(report))
    save_params(args.output, best, extra={
        "cv": dict(report, k=args.cv, rule_text=CV_RULE_TEXT), "mode": args.mode,
        "pred": str(args.pred), "labels": str(args.labels), "slices": int(len(labels)),
        "slice_spec": args.slices, "budget_per_fold": args.budget})
    pooled = report["pooled_held_out"]
    print(f"wrote {args.output}: pooled held-out V_rand {pooled['v_rand']:.4f}, "
          f"V_info {pooled['v_info']:.4f}", file=sys.stderr)
    return 0
