"""Export a trained model to every format that runs on this machine.

A thin wrapper over ``fusionnet export`` (fusionnet_tf.cli.export): one call
per format, each writing its artifact and a JSON model card.

Usage:
    python export/export_model.py --model run/best.keras --output exported \
        [--calibration-data ../shared/data/isbi2012/train-volume.tif]

Writes exported/saved_model/fusionnet/<version>/, exported/litert/*.tflite
(float32, fp16, dynamic-int8 and, with --calibration-data, int8) and
exported/onnx/fusionnet.onnx. TensorRT is skipped (NVIDIA machines only:
run ``fusionnet export --format tensorrt`` there).
"""

import argparse
import sys

from fusionnet_tf.cli import main as fusionnet


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Trained .keras file, or 'pretrained'.")
    parser.add_argument("--output", required=True, help="Output folder.")
    parser.add_argument("--name", default="fusionnet", help="Model name (default: fusionnet).")
    parser.add_argument("--calibration-data", default=None,
                        help="EM images for int8 calibration (default: skip int8).")
    return parser.parse_args(argv)


def commands(args):
    """The ``fusionnet`` argument lists to run, in order."""
    common = ["--model", args.model, "--name", args.name]
    runs = [["export", "--format", "saved_model", "--output", f"{args.output}/saved_model"]
            + common,
            ["export", "--format", "onnx", "--output", f"{args.output}/onnx"] + common]
    quantizations = ["none", "fp16", "dynamic-int8"]
    if args.calibration_data:
        quantizations.append("int8")
    for quantize in quantizations:
        run = ["export", "--format", "litert", "--output", f"{args.output}/litert",
               "--quantize", quantize] + common
        if quantize == "int8":
            run += ["--calibration-data", args.calibration_data]
        runs.append(run)
    return runs


if __name__ == "__main__":
    arguments = parse_args()
    for argv in commands(arguments):
        code = fusionnet(argv)
        if code:
            sys.exit(code)
