"""
Title: Whole-slice inference speed of FusionNet against PyTorch, side by side
Description: Times 512x512 whole-slice prediction with the default
``fusionnet_tf.Predictor`` (``Predictor(model, tile_shape=512, tta=1)``: one tile per
slice, no TTA, every other setting at its default) for FusionNet base 16 and base 64
in float32, and base 64 with ``precision="mixed_bfloat16"``, interleaved with
PyTorch on the same machine:

- float32: the independent PyTorch peer (``--peer``, by default
  ``../shared/peers/torch_fusionnet.py`` next to the repository: eval mode,
  ``inference_mode``, channels-last, 2 warm-ups, median of ``--calls``);
- bfloat16: ``benchmarks/torch_reference.py --variant bf16`` (the peer has no
  bf16 mode): BatchNorm folded, channels-last, ``inference_mode``, under
  ``torch.autocast("cpu", torch.bfloat16)``.

Each setting runs ``--rounds`` rounds of (PyTorch, ours); every round is
printed with the CPU time other processes used meanwhile (``foreign``: 0 = a
quiet machine, 0.5 = another process held one of 2 cores). ``ratio_vs_torch``
keys are our speed over PyTorch's (>1: we are faster): the median over
rounds of the ratio within each round, so both sides of a ratio saw about the
same load.

Diagnostic rows (``constant_weights``) time base 64 through
``inference_function`` (weights as graph constants, see
``fusionnet_tf.inference.optimize``) in a child process, next to the
Predictor, so its effect shows whether or not the Predictor uses it.

Run: ``python benchmarks/bench_inference.py --torch-python /tmp/torchvenv/bin/python``
(about 5 minutes on 2 quiet cores; ``--skip-bf16`` saves half). Without
``--torch-python`` only our side runs. The last line printed is one JSON object.

Weights are random (speed does not depend on them) but BatchNorm statistics
are randomized too, so the folded biases are not all zero (as in a trained
model; zero biases would let grappler drop the bias adds). The input is an
ISBI 2012 test slice shipped with the package.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fusionnet_tf.data import normalize, read_stack  # noqa: E402
from fusionnet_tf.inference import Predictor  # noqa: E402
from fusionnet_tf.inference.optimize import conv_flops, inference_copy, inference_function  # noqa: E402
from fusionnet_tf.models import build_fusionnet  # noqa: E402
from hostinfo import cpu_description, foreign_cpu_meter  # noqa: E402  (benchmarks/)

SIDE = 512
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EXAMPLE = os.path.join(REPO, "fusionnet_tf", "examples", "isbi2012_test_slices_0-2.tif")
DEFAULT_PEER = os.path.join(REPO, "..", "shared", "peers", "torch_fusionnet.py")


# === Data and models ===

def test_slice():
    """One 512x512 EM slice normalized to [0, 1] (random if the example is missing)."""
    if os.path.exists(EXAMPLE):
        return normalize(read_stack(EXAMPLE)[:1], mode="slice")[0]
    return np.random.default_rng(0).random((SIDE, SIDE), dtype=np.float32)


def bench_model(base_filters, seed=0):
    """FusionNet (depth 4) with random weights and random BatchNorm statistics."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_fusionnet(base_filters=base_filters, depth=4)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n),
                               rng.normal(0, 0.1, n), rng.uniform(0.5, 2.0, n)])
    return model


def time_ours(run, calls):
    """Run ``run()`` ``calls`` times; returns ``{"seconds": median, "times", "foreign"}``."""
    foreign = foreign_cpu_meter()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"seconds": round(statistics.median(times), 4), "times": [round(t, 4) for t in times],
            "foreign": foreign()}


class ConstantWeightsWorker:
    """``inference_function`` (weights as constants) of the bench model, in a child process.

    TensorFlow caches oneDNN convolution primitives per process by shape, not
    by whether the kernel is constant: in a process that already ran the same
    convolutions with variable weights, the constant kernels would get the
    variables' HWIO primitives. A child process keeps the two apart.

    Attributes:
        setup_seconds: float. Copy, trace and first call, in the child.
    """

    def __init__(self, base_filters, precision):
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--constant-weights-worker",
             str(base_filters), precision],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.setup_seconds = self._reply()["setup_seconds"]

    def _reply(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the constant-weights worker ended early")
        return json.loads(line)

    def time(self, calls):
        """``time_ours`` record of ``calls`` passes in the child."""
        self.process.stdin.write(f"{calls}\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def constant_weights_worker(base_filters, precision):
    """Child side of ``ConstantWeightsWorker``: one JSON line per request on stdin."""
    start = time.perf_counter()
    network = inference_function(inference_copy(bench_model(base_filters), precision=precision), SIDE)
    batch = test_slice()[None, :, :, None]
    network(batch).numpy()  # trace, grappler over the constants, kernel reorders
    print(json.dumps({"setup_seconds": round(time.perf_counter() - start, 2)}), flush=True)
    network(batch).numpy()
    for line in sys.stdin:
        print(json.dumps(time_ours(lambda: network(batch).numpy(), int(line))), flush=True)


# === PyTorch side (subprocesses with their own Python) ===

def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def time_peer(python, peer, base_filters, calls):
    """One run of the independent peer: ``{"seconds", "times", "foreign", "torch"}``."""
    done = subprocess.run(
        [python, os.path.basename(peer), "--base", str(base_filters), "--size", str(SIDE),
         "--batch", "1", "--steps", str(calls), "--warmup", "2", "--mode", "infer",
         "--threads", str(os.cpu_count()), "--channels-last"],
        cwd=os.path.dirname(peer), check=True, capture_output=True, text=True)
    report = last_json(done.stdout)
    return {"seconds": report["sec_per_step"], "min": report["sec_per_step_min"],
            "foreign": report.get("foreign_cpu"), "torch": report.get("torch")}


def time_torch_reference(python, variant, base_filters, calls):
    """One run of ``torch_reference.py --variant``: ``{"seconds", "times", "foreign", "torch"}``."""
    done = subprocess.run(
        [python, os.path.join(HERE, "torch_reference.py"), "--variant", variant,
         "--base-filters", str(base_filters), "--side", str(SIDE), "--repeats", str(calls),
         "--warmup", "2", "--threads", str(os.cpu_count())],
        check=True, capture_output=True, text=True)
    report = last_json(done.stdout)
    return {"seconds": report["seconds_per_slice"], "times": report.get("times"),
            "foreign": report.get("foreign_cpu"), "torch": report.get("torch")}


# === Benchmark ===

def interleave(name, ours, torch_side, rounds, log):
    """``rounds`` x (PyTorch, then each of ``ours``); returns the records and median ratios.

    Args:
        name: setting name, e.g. ``"float32_base64"``.
        ours: dict label -> function returning a ``time_ours`` record.
        torch_side: function returning a PyTorch record, or None.

    Returns:
        ``(records, {label: median over rounds of torch seconds / our seconds})``.
    """
    records, ratios = [], {label: [] for label in ours}
    for index in range(rounds):
        theirs = torch_side() if torch_side else None
        record = {"setting": name, "round": index + 1, "torch": theirs, "ours": {}}
        line = f"{name} round {index + 1}:"
        if theirs:
            line += f" torch {theirs['seconds']:.3f} s (foreign {theirs['foreign']});"
        for label, run in ours.items():
            mine = record["ours"][label] = run()
            line += f" {label} {mine['seconds']:.3f} s (foreign {mine['foreign']})"
            if theirs:
                ratio = theirs["seconds"] / mine["seconds"]
                ratios[label].append(ratio)
                record.setdefault("ratio_vs_torch", {})[label] = round(ratio, 3)
                line += f" ratio {ratio:.3f}"
            line += ";"
        records.append(record)
        log(line)
    return records, {label: statistics.median(r) for label, r in ratios.items() if r}


def median_seconds(records, label=None):
    """Median over rounds of our ``label`` side (None: PyTorch's)."""
    values = [r["torch"]["seconds"] if label is None else r["ours"][label]["seconds"]
              for r in records if label is not None or r["torch"]]
    return statistics.median(values) if values else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", default=None, metavar="PY",
                        help="Python of an environment with torch (never a dependency of this "
                             "project); without it only our side is timed (default: none).")
    parser.add_argument("--peer", default=DEFAULT_PEER, metavar="PATH",
                        help="the independent PyTorch FusionNet script "
                             "(default: ../shared/peers/torch_fusionnet.py from the repository).")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved (PyTorch, ours) rounds per setting (default: 2).")
    parser.add_argument("--calls", type=int, default=3,
                        help="timed calls per side and round, after warm-ups; median (default: 3).")
    parser.add_argument("--skip-bf16", action="store_true", help="Skip the bfloat16 setting.")
    parser.add_argument("--constant-weights-worker", nargs=2, metavar=("BASE", "PRECISION"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.constant_weights_worker:
        base_filters, precision = args.constant_weights_worker
        return constant_weights_worker(int(base_filters), precision)
    for name in ("rounds", "calls"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1; received {getattr(args, name)}")
    if args.torch_python and not os.path.isfile(args.peer):
        print(f"error: --peer {args.peer!r} is not a file", file=sys.stderr)
        sys.exit(2)
    peer = os.path.abspath(args.peer)

    def log(line):
        print(line, flush=True)

    cpu = cpu_description()
    cpu_model, cpus = cpu.pop("model"), cpu.pop("cpus")
    flags = cpu
    log(f"CPU: {cpu_model}, {cpus} CPUs; flags: "
        + ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in flags.items()))
    image = test_slice()
    records, result = [], {}

    def run_setting(name, base_filters, precision, torch_side, constant_weights=False):
        """Time the default Predictor (and optionally ``inference_function``) against PyTorch."""
        model = bench_model(base_filters)
        start = time.perf_counter()
        predictor = Predictor(model, tile_shape=SIDE, tta=1, precision=precision)
        predictor.predict(image)  # trace, oneDNN kernel choice, the auto engine's timing
        result[f"setup_seconds_{name}"] = round(time.perf_counter() - start, 2)
        predictor.predict(image)
        variant = getattr(predictor, "variant", None)
        log(f"{name}: the default Predictor runs {variant or 'its only variant'}")
        ours = {"predictor": lambda: time_ours(lambda: predictor.predict(image), args.calls)}
        if constant_weights:  # diagnostic: the copy with its weights as graph constants
            worker = ConstantWeightsWorker(base_filters, precision)
            result[f"setup_seconds_{name}_constant_weights"] = worker.setup_seconds
            ours["constant_weights"] = lambda: worker.time(args.calls)
        rows, ratios = interleave(name, ours, torch_side, args.rounds, log)
        if constant_weights:
            worker.close()
        records.extend(rows)
        result[f"variant_{name}"] = variant
        for label in ours:
            suffix = "" if label == "predictor" else f"_{label}"
            result[f"seconds_per_slice_{name}{suffix}"] = round(median_seconds(rows, label), 4)
            if label in ratios:
                result[f"ratio_vs_torch_{name}{suffix}"] = round(ratios[label], 3)
        if torch_side:
            result[f"torch_seconds_per_slice_{name}"] = round(median_seconds(rows), 4)
        return model

    def peer_side(base_filters):
        if not args.torch_python:
            return None
        return lambda: time_peer(args.torch_python, peer, base_filters, args.calls)

    run_setting("float32_base16", 16, "float32", peer_side(16))
    model64 = run_setting("float32_base64", 64, "float32", peer_side(64), constant_weights=True)
    if not args.skip_bf16:
        bf16_torch = (None if not args.torch_python else
                      lambda: time_torch_reference(args.torch_python, "bf16", 64, args.calls))
        run_setting("bf16_base64", 64, "mixed_bfloat16", bf16_torch, constant_weights=True)
        if "ratio_vs_torch_bf16_base64" in result:
            result["ratio_vs_torch_bf16"] = result["ratio_vs_torch_bf16_base64"]

    flops64 = conv_flops(model64, SIDE, SIDE)
    torch_version = next((r["torch"].get("torch") for r in records if r["torch"]), None)
    result.update({
        "slices_per_s_base16": round(1 / result["seconds_per_slice_float32_base16"], 4),
        "slices_per_s_base64": round(1 / result["seconds_per_slice_float32_base64"], 4),
        "gflops_base64": round(flops64 / result["seconds_per_slice_float32_base64"] / 1e9, 2),
        "gflop_per_slice_base64": round(flops64 / 1e9, 2),
        "rounds": records,
        "cpu_model": cpu_model, "cpu_flags": flags, "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "tensorflow": tf.__version__, "torch": torch_version,
        "peer": peer if args.torch_python else None,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
