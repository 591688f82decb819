"""``fusionnet train``: train FusionNet / U-Net from a YAML or JSON config."""

HELP = "Train a model from a YAML/JSON config (resumes an interrupted run)."

DESCRIPTION = """\
Train a membrane-segmentation model as the config file says, writing
config.yaml, latest.keras, best.keras, log.csv, curves.png and tensorboard/
to the config's output_dir. Re-running the same command after an interruption
resumes at the step where it stopped. Relative paths in the config are
resolved against the current directory.

example:
  fusionnet train --config training/configs/isbi2012.yaml \\
      --set epochs=10 --set optimizer.learning_rate=3e-4 --set output_dir=runs/try1
"""


def add_parser(subparsers):
    import argparse

    parser = subparsers.add_parser(
        "train", help=HELP, description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML (.yaml/.yml) or JSON config file (default: none, "
                             "built-in defaults; data paths must then be set with --set).")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        dest="overrides",
                        help="Override one config value with a dotted key, e.g. "
                             "--set data.tile_size=256; repeatable (default: none). "
                             "VALUE is parsed as YAML.")
    parser.add_argument("--output-dir", default=None,
                        help="Shortcut for --set output_dir=DIR (default: the config's "
                             "output_dir).")
    parser.add_argument("--init", metavar="MODEL", default=None,
                        help="Fine-tune: start from this .keras model's weights, or "
                             "'isbi2012' for the shipped model (= --set model.init=MODEL; the "
                             "architecture must match). Unless set explicitly, the learning "
                             "rate becomes 1e-4 with 50 warm-up steps (default: from scratch).")
    parser.add_argument("--freeze", choices=("none", "encoder"), default=None,
                        help="encoder: do not train the encoder (contracting path) "
                             "(= --set model.freeze=encoder) (default: the config's, none).")
    parser.add_argument("--check", action="store_true",
                        help="Only load and check the config (paths, sizes, types), print "
                             "the resolved config and exit (default: off).")
    parser.add_argument("--quiet", action="store_true",
                        help="No per-step progress bar, one line per epoch (default: off).")
    parser.set_defaults(run=run)


def run(args):
    import json

    import yaml

    from fusionnet_tf.training.config import check_config, config_to_dict, load_config

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.init:
        overrides.append(f"model.init={json.dumps(args.init)}")  # a YAML string, whatever the path
    if args.freeze:
        overrides.append(f"model.freeze={args.freeze}")
    config = load_config(args.config, overrides)
    check_config(config)
    if args.check:
        print(yaml.safe_dump(config_to_dict(config), sort_keys=False), end="")
        return 0

    from fusionnet_tf.training.run import train

    result = train(config, verbose=2 if args.quiet else "auto")
    history = result.history
    summary = ", ".join(f"{key}={values[-1]:.4f}" for key, values in history.items()
                        if key != "epoch" and values)
    epochs = len(history.get("epoch", []))
    print(f"trained {epochs} epoch(s) in {result.output_dir}" + (f": {summary}" if summary else ""))
    return 0
