"""``fusionnet info``: architecture summary and parameter table."""

HELP = "Print the FusionNet/U-Net/FCN parameter table or one model's summary."
ARCHITECTURES = ("fusionnet", "unet", "fcn8s", "fcn16s", "fcn32s", "fusionnet3d")
TABLE_ARCHITECTURES = ("fusionnet", "unet", "fcn8s", "fusionnet3d")
# fusionnet3d rows: two anisotropic levels, one output per default affinity offset
TABLE_KNOBS = {"fusionnet3d": {"anisotropic_levels": 2, "out_channels": 10}}


def add_parser(subparsers):
    parser = subparsers.add_parser("info", help=HELP, description=HELP)
    parser.add_argument("--architecture", choices=ARCHITECTURES, default=None,
                        help="Print the layer summary of this architecture "
                             "(default: only the parameter table).")
    parser.add_argument("--base-filters", type=int, default=64,
                        help="Filters of the first level for --architecture (default: 64).")
    parser.add_argument("--depth", type=int, default=4,
                        help="Pooling levels for --architecture (default: 4; FCN: always 5).")
    parser.add_argument("--fc-filters", type=int, default=None,
                        help="FCN only: width of fc6/fc7 (default: 64 x base filters).")
    parser.set_defaults(run=run)


def parameter_table(bases=(16, 32, 64), depth=4):
    """Rows ``(architecture, base_filters, depth, parameters)`` for the table.

    FCN rows use the VGG16 depth (5 poolings) and fc6/fc7 64 x base filters
    wide (4096 at base 64); FCN-16s/32s differ from FCN-8s by a few hundred
    parameters. fusionnet3d rows: two anisotropic levels, 10 affinity outputs. Counts come from ``models.count_parameters`` (small builds
    only), not from building the base-64 models.
    """
    from fusionnet_tf.models import build_model, count_parameters, model_depth

    rows = []
    for architecture in TABLE_ARCHITECTURES:
        knobs = TABLE_KNOBS.get(architecture, {})
        levels = model_depth(build_model(architecture, base_filters=1, depth=depth, **knobs))
        for base in bases:
            rows.append((architecture, base, levels,
                         count_parameters(architecture, base_filters=base, depth=depth, **knobs)))
    return rows


def run(args):
    from fusionnet_tf.models import build_model

    if args.architecture:
        model = build_model(args.architecture, base_filters=args.base_filters, depth=args.depth,
                            fc_filters=args.fc_filters, **TABLE_KNOBS.get(args.architecture, {}))
        model.summary()
        return 0
    print(f"{'architecture':<12} {'base':>5} {'depth':>5} {'parameters':>14}")
    for architecture, base, depth, count in parameter_table():
        print(f"{architecture:<12} {base:>5} {depth:>5} {count:>14,}")
    return 0
