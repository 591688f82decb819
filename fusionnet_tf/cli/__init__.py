"""The ``fusionnet`` command: one subcommand per module in this package.

Each subcommand module defines ``add_parser(subparsers)`` (cheap: argparse
only) and ``run(args)`` (imports TensorFlow when it needs it), so
``fusionnet --help`` answers without loading TensorFlow.
"""

import argparse
import importlib
import re
import sys

from fusionnet_tf import __version__

# subcommand -> module defining add_parser(subparsers) and run(args)
COMMANDS = {
    "info": "fusionnet_tf.cli.info",
    "train": "fusionnet_tf.cli.train",
    "predict": "fusionnet_tf.cli.predict",
    "evaluate": "fusionnet_tf.cli.evaluate",
    "export": "fusionnet_tf.cli.export",
    "serve": "fusionnet_tf.cli.serve",
    "predict-volume": "fusionnet_tf.cli.predict_volume",
    "segment": "fusionnet_tf.cli.segment",
    "tune-segment": "fusionnet_tf.cli.tune_segment",
    "train-edges": "fusionnet_tf.cli.train_edges",
    "segment-volume": "fusionnet_tf.cli.segment_volume",
    "export-precomputed": "fusionnet_tf.cli.export_precomputed",
    "view": "fusionnet_tf.cli.view",
}

# Errors that describe bad input: printed as one line, exit code 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError,
               IsADirectoryError, NotADirectoryError, KeyError)


# pip extra -> top-level modules it installs; mirrors [options.extras_require] in
# setup.cfg (tests/test_cli_errors.py checks that they agree)
EXTRA_MODULES = {
    "export": ("onnxruntime", "ai_edge_litert", "tf2onnx", "onnx"),
    "volumes": ("zarr", "dask", "distributed", "ome_zarr", "cloudvolume", "zmesh", "DracoPy",
                "kimimaro", "tensorstore"),
    "viewer": ("neuroglancer", "selenium"),
    "mws": ("mwatershed",),
    "bioimageio": ("bioimageio", "pydantic", "tf2onnx", "onnx", "onnxruntime"),
}


class CommandError(Exception):
    """A user-facing failure that is not bad input (e.g. a missing runtime)."""


def missing_module(exc):
    """Name of the missing third-party module behind ImportError ``exc``, or None.

    Follows ``raise ... from`` causes, so an ImportError that wraps a
    ModuleNotFoundError with a friendlier message counts too. A missing
    ``fusionnet_tf`` module, or an ImportError that is not about a missing
    module (``cannot import name``, a broken native library), is a bug or a
    broken install: None, so the caller lets the traceback through.
    """
    while isinstance(exc, ImportError):
        if (isinstance(exc, ModuleNotFoundError) and exc.name
                and exc.name.split(".")[0] != "fusionnet_tf"):
            return exc.name
        exc = exc.__cause__
    return None


def install_hint(module, args):
    """``pip install`` advice for missing ``module`` in the command ``args`` runs."""
    top = module.split(".")[0]
    extras = [extra for extra, modules in EXTRA_MODULES.items() if top in modules]
    if getattr(args, "format", None) == "bioimageio" and "bioimageio" in extras:
        extras = ["bioimageio"]  # export --format bioimageio: one extra brings everything
    if not extras:
        return "install the package that provides it"
    return f"install it with: pip install 'fusionnet-tf[{extras[0]}]'"


def missing_module_message(exc, module, args):
    """One line naming the missing ``module`` and the pip extra that installs it."""
    hint = install_hint(module, args)
    if isinstance(exc, ModuleNotFoundError):
        return f"the Python module {module!r} is not installed; {hint}"
    text = " ".join(str(exc).split())  # a wrapping ImportError's own message, on one line
    return text if "pip install" in text else f"{text}; {hint}"


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that takes only whole option names.

    No abbreviations (``allow_abbrev=False``): ``--tile`` is not taken for
    ``--tile-size`` or ``--tile-z``, so an option added later never changes
    what a command line means.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser():
    """Return the top-level ``argparse.ArgumentParser`` with all subcommands."""
    parser = Parser(
        prog="fusionnet",
        description=(
            "FusionNet membrane segmentation for electron-microscopy images: "
            "train, predict membranes, segment neurons, evaluate (ISBI 2012 V_rand / "
            "V_info), export and serve."
        ),
        epilog="Run 'fusionnet COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"fusionnet-tf {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="Also print TensorFlow's start-up and C++ log lines "
                             "(default: only progress, results and errors).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers.required = True
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


# library parameter -> (argparse dest that must exist, the option the user typed); library
# messages name parameters (`tile_shape`, batch_size=0), a command's messages name its options
PARAMETER_OPTIONS = {
    "tile_shape": ("tile_size", "--tile-size"), "tile": ("tile_size", "--tile-size"),
    "batch_size": ("batch_size", "--batch-size"), "block_shape": ("block", "--block"),
    "overlap": ("overlap", "--overlap"), "align": ("align", "--align"),
    "threshold": ("label_threshold", "--label-threshold"),
}


def _parameter_options():
    """``PARAMETER_OPTIONS`` and the flag of every ``PredictOptions`` field (generated)."""
    from fusionnet_tf.predict_options import flags

    return {**flags(), **PARAMETER_OPTIONS}


def name_options(text, args=None):
    """``text`` with library parameters (``_parameter_options``) named as ``args``'s options.

    ```tile_shape``` becomes ``--tile-size`` and ``tile_shape=30`` becomes
    ``--tile-size 30``, for the parameters whose option the command has.
    """
    for name, (dest, option) in _parameter_options().items():
        if args is not None and hasattr(args, dest):
            text = re.sub(rf"`{name}`", option, text)
            text = re.sub(rf"(?<![\w.-]){name}=", f"{option} ", text)
    return text


def error_message(exc, args=None):
    """One-line text for a user-facing exception, naming ``args``'s options (``name_options``)."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc)
    return " ".join(name_options(text, args).split())


def main(argv=None):
    """Entry point of the ``fusionnet`` console script. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        # TensorFlow's start-up lines (oneDNN, CUDA probing) are noise on a command line
        from fusionnet_tf.cli.quiet import quiet_tensorflow

        quiet_tensorflow()
    try:
        result = args.run(args)
    except USER_ERRORS + (CommandError,) as exc:
        print(f"fusionnet {args.command}: error: {error_message(exc, args)}", file=sys.stderr)
        return 2
    except ImportError as exc:
        module = missing_module(exc)
        if module is None:
            raise  # our own import bug: keep the traceback
        print(f"fusionnet {args.command}: error: {missing_module_message(exc, module, args)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fusionnet {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
