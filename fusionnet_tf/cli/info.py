"""``fusionnet info``: architecture summary and parameter table."""

HELP = "Print the FusionNet/U-Net parameter table or one model's summary."


def add_parser(subparsers):
    parser = subparsers.add_parser("info", help=HELP, description=HELP)
    parser.add_argument("--architecture", choices=("fusionnet", "unet"), default=None,
                        help="Print the layer summary of this architecture "
                             "(default: only the parameter table).")
    parser.add_argument("--base-filters", type=int, default=64,
                        help="Filters of the first level for --architecture (default: 64).")
    parser.add_argument("--depth", type=int, default=4,
                        help="Pooling levels for --architecture (default: 4).")
    parser.set_defaults(run=run)


def parameter_table(bases=(16, 32, 64), depth=4):
    """Rows ``(architecture, base_filters, depth, parameters)`` for the table."""
    from fusionnet_tf.models import build_model

    rows = []
    for architecture in ("fusionnet", "unet"):
        for base in bases:
            model = build_model(architecture, base_filters=base, depth=depth)
            rows.append((architecture, base, depth, model.count_params()))
    return rows


def run(args):
    from fusionnet_tf.models import build_model

    if args.architecture:
        model = build_model(args.architecture, base_filters=args.base_filters, depth=args.depth)
        model.summary()
        return 0
    print(f"{'architecture':<12} {'base':>5} {'depth':>5} {'parameters':>14}")
    for architecture, base, depth, count in parameter_table():
        print(f"{architecture:<12} {base:>5} {depth:>5} {count:>14,}")
    return 0
