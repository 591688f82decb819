"""``fusionnet train-edges``: train the learned edge classifier of ``segment --method edges``."""

HELP = "Train a learned edge classifier (segment --method edges) on labelled slices."

DESCRIPTION = """\
Learn when to merge watershed fragments instead of hand-setting a boundary
threshold. The membrane map of labelled slices is cut into the fragments of
'fusionnet segment' (seeded watershed; --params / --set as for segment). For
every pair of touching fragments the boundary's membrane probability is
summarised (mean, std, min, max, quantiles 0.1-0.9, length) together with the
two regions' sizes and mean probability; an edge is a 'merge' when the ground
truth cell covering most of one fragment also covers most of the other
(fragments lying mostly on ground-truth membrane are left out). A random
forest (scikit-learn, fixed seed) learns p(merge) from the edges of the
fragments and of every merge an oracle makes with the ground truth, and is
written as an .npz file for 'fusionnet segment --method edges --classifier
FILE', which merges the most confident pair, re-scores the merged region's
edges and stops when p(merge) < 0.5, then merges small segments as the recipe.

With --cv K the slices are split into K contiguous folds (those of
'tune-segment --cv'): for each fold a classifier is trained on the other folds
and scored on the held-out fold; it prints each fold's held-out V_rand /
V_info and the pooled held-out score (the figures to expect on new slices).
The classifier written is trained on all slices either way.
"""

EPILOG = """\
examples:
  fusionnet train-edges --pred val_membranes.tif --labels val_labels.tif -o edges.npz
  fusionnet train-edges --pred oof_membranes.tif --labels train-labels.tif -o edges.npz --cv 5
  fusionnet train-edges --pred pred.h5:/membrane --labels ids.h5:/labels --label-convention instance \\
      --slices 0-19 -o edges.npz --set seed_threshold=0.2
  fusionnet segment membranes.tif -o neurons.tif --method edges --classifier edges.npz
"""


def add_parser(subparsers):
    """Register ``train-edges``; argparse only."""
    import argparse

    from fusionnet_tf.choices import LABEL_CONVENTIONS, PRED_CONVENTIONS

    parser = subparsers.add_parser("train-edges", help=HELP, description=DESCRIPTION,
                                   epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, metavar="PRED",
                        help="Membrane probability map (N, H, W): TIFF, file.h5:/key, zarr; "
                             "float in [0, 1] or uint8 (1 = membrane).")
    parser.add_argument("--labels", required=True, metavar="LABELS",
                        help="Ground truth of the same (N, H, W) shape (see "
                             "--label-convention).")
    parser.add_argument("-o", "--output", required=True, metavar="CLASSIFIER.npz",
                        help="Where to write the classifier (.npz: JSON header and tree arrays, "
                             "no pickle; written atomically).")
    parser.add_argument("--label-convention", choices=LABEL_CONVENTIONS, default="isbi",
                        help="isbi: 0 = membrane; membrane: nonzero = membrane; instance: "
                             "cell ids, 1-px boundaries where the id changes or is 0. Cells are "
                             "the 4-connected interior regions of each slice, as the ISBI "
                             "scores see them (default: isbi).")
    parser.add_argument("--pred-convention", choices=PRED_CONVENTIONS, default="membrane",
                        help="membrane: high = membrane; isbi: high = cell interior "
                             "(predict --isbi) (default: membrane).")
    parser.add_argument("--params", metavar="FILE|NAME", default=None,
                        help="Fragment parameters (seeds, smoothing, min_size): JSON from "
                             "'fusionnet tune-segment' or a shipped model's name; stored in the "
                             "classifier file (default: isbi2012's, as 'fusionnet segment').")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one fragment parameter, e.g. --set seed_threshold=0.2 "
                             "(repeatable; keys: see SegmentParams; merge_* are not used).")
    parser.add_argument("--cv", type=int, default=None, metavar="K",
                        help="Also cross-validate over K contiguous folds of slices (K >= 2) "
                             "and print held-out scores per fold and pooled (default: no "
                             "cross-validation).")
    parser.add_argument("--trees", type=int, default=100,
                        help="Trees in the random forest (default: 100).")
    parser.add_argument("--seed", type=int, default=0,
                        help="random_state of the forest (default: 0).")
    parser.add_argument("--quiet", action="store_true",
                        help="No progress bar (default: progress bars on stderr).")
    from fusionnet_tf.cli.slices import add_slices_argument

    add_slices_argument(parser, "--labels, and of --pred when it holds the whole stack")
    parser.set_defaults(run=run)


def check_classifier_output(args):
    """Fail before training if ``--output`` is not a writable ``.npz`` apart from the inputs."""
    from fusionnet_tf.cli.segment import check_inputs_outputs
    from fusionnet_tf.io.outputs import check_output_folder
    from fusionnet_tf.segmentation.edge_classifier import SUFFIX

    if not str(args.output).lower().endswith(SUFFIX):
        raise ValueError(f"--output {args.output}: the classifier is written as a {SUFFIX} file")
    check_output_folder(args.output, f"--output {args.output}")
    check_inputs_outputs([("--pred", args.pred), ("--labels", args.labels),
                          ("--params", args.params)], args.output)


def read_training_data(args):
    """``(membrane, labels)``: (N, H, W) float32 map and binary ground truth (1 = membrane), checked."""
    from fusionnet_tf.cli.slices import select_matching
    from fusionnet_tf.data import read_labels
    from fusionnet_tf.segmentation.io import read_membrane

    labels = read_labels(args.labels, args.label_convention)
    membrane = read_membrane(args.pred, args.pred_convention)
    labels, membrane = select_matching(labels, membrane, args.slices)
    if labels.shape != membrane.shape:
        raise ValueError(f"--labels {args.labels} has shape {labels.shape} but --pred "
                         f"{args.pred} has {membrane.shape}")
    return membrane, labels


def run(args):
    """(Cross-validate,) train on all slices, write the classifier. Returns 0."""
    import sys

    from fusionnet_tf.cli.segment import resolve_params
    from fusionnet_tf.segmentation.edge_classifier import (cross_validate_edge_classifier,
                                                           format_edge_cv_report,
                                                           train_edge_classifier)

    if args.trees < 1:
        raise ValueError(f"--trees must be >= 1; received {args.trees}")
    if args.cv is not None and args.cv < 2:
        raise ValueError(f"--cv must be >= 2 folds; received {args.cv}")
    check_classifier_output(args)
    params = resolve_params(args)
    membrane, labels = read_training_data(args)
    report = None
    if args.cv is not None:
        if args.cv > len(labels):
            raise ValueError(f"--cv {args.cv}: more folds than the {len(labels)} slices of "
                             f"--labels {args.labels}")
        report = cross_validate_edge_classifier(
            membrane, labels, folds=args.cv, params=params, trees=args.trees, seed=args.seed,
            callback=None if args.quiet else lambda row: print(
                f"fold {row['fold']}: held-out V_rand {row['v_rand']:.4f}", file=sys.stderr))
        print(format_edge_cv_report(report))
    classifier = train_edge_classifier(membrane, labels, params, trees=args.trees,
                                       seed=args.seed, progress=not args.quiet)
    classifier.info.update(pred=str(args.pred), labels=str(args.labels),
                           label_convention=args.label_convention, slice_spec=args.slices)
    if report is not None:
        classifier.info["cv"] = dict(report, k=args.cv)
    classifier.save(args.output)
    tail = (f"; pooled held-out V_rand {report['pooled_held_out']['v_rand']:.4f}, V_info "
            f"{report['pooled_held_out']['v_info']:.4f}" if report else "")
    print(f"wrote {args.output}: {args.trees} trees on {classifier.info['examples']} edges of "
          f"{len(labels)} slice(s){tail}", file=sys.stderr)
    return 0
