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
"""

EPILOG = """\
example:
  fusionnet tune-segment --pred val_membranes.tif --labels val_labels.tif -o params.json --budget 80
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
                        help="isbi: 0 = membrane; membrane: nonzero = membrane (default: isbi).")
    parser.add_argument("--pred-convention", choices=PRED_CONVENTIONS, default="membrane",
                        help="membrane: high = membrane; isbi: high = cell interior "
                             "(predict --isbi) (default: membrane).")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of the random part of the search (default: 0).")
    from fusionnet_tf.cli.segment import add_method_argument

    add_method_argument(parser)  # affinity files: --labels are then 3D ids, scored in 3D
    parser.set_defaults(run=run)


def check_params_output(args):
    """Fail before tuning if ``--output`` is not a writable new .json next to the inputs."""
    from fusionnet_tf.cli.segment import check_inputs_outputs
    from fusionnet_tf.io_utils import check_output_folder

    if not str(args.output).lower().endswith(".json"):
        raise ValueError(f"--output {args.output}: parameters are written as a .json file")
    check_output_folder(args.output, f"--output {args.output}")
    check_inputs_outputs([("--pred", args.pred), ("--labels", args.labels),
                          ("--start", args.start)], args.output)


def run(args):
    """Tune, print the table, write the JSON. Returns 0."""
    import sys

    from tqdm import tqdm

    from fusionnet_tf.data import read_labels
    from fusionnet_tf.segmentation import default_params, load_params, save_params
    from fusionnet_tf.segmentation.io import read_membrane
    from fusionnet_tf.segmentation.tune import format_rows, tune

    if args.budget < 1:
        raise ValueError(f"--budget must be >= 1; received {args.budget}")
    check_params_output(args)
    from fusionnet_tf.data.affinity_io import affinity_metadata

    if affinity_metadata(args.pred) is not None:
        from fusionnet_tf.cli.affinity_segment import run_tune

        return run_tune(args)
    if args.method is not None:
        raise ValueError(f"--method applies to affinity files; --pred {args.pred} is not one")
    start = load_params(args.start) if args.start else default_params()
    labels = read_labels(args.labels, args.label_convention)
    membrane = read_membrane(args.pred, args.pred_convention)
    if labels.shape != membrane.shape:
        raise ValueError(f"--labels {args.labels} has shape {labels.shape} but --pred "
                         f"{args.pred} has {membrane.shape}")
    with tqdm(total=args.budget, desc="tune-segment", unit="setting", file=sys.stderr) as bar:
        best, rows = tune(membrane, labels, budget=args.budget, mode=args.mode, start=start,
                          seed=args.seed, callback=lambda row: bar.update(1))
    print(format_rows(rows))
    top = max(rows, key=lambda row: (row["v_rand"], row["v_info"]))
    save_params(args.output, best, extra={
        "v_rand": top["v_rand"], "v_info": top["v_info"], "mode": args.mode,
        "pred": str(args.pred), "labels": str(args.labels), "slices": int(len(labels)),
        "settings_tried": len(rows)})
    print(f"wrote {args.output}: V_rand {top['v_rand']:.4f}, V_info {top['v_info']:.4f}",
          file=sys.stderr)
    return 0
