"""Training-step throughput of FusionNet on CPU, float32 and bfloat16, against PyTorch.

Times ``train_on_batch`` after warm-up on random 512x512 tiles, for every
precision of ``--precision`` (default ``float32,mixed_bfloat16``) and every
BatchNormalization variant (``--variant`` plus ``--compare``), all models'
steps interleaved. With ``--torch-python PY`` (a Python that has torch;
PyTorch is no dependency of this project) each round also runs, as
subprocesses:

- the independent PyTorch peer (``--peer``, default
  ``../shared/peers/torch_fusionnet.py`` next to the repository) in float32
  training mode: the reference of ``ratio_vs_torch_train_float32``;
- ``benchmarks/torch_reference.py --mode train --variant bf16``: this
  project's own plain-PyTorch FusionNet under
  ``torch.autocast("cpu", torch.bfloat16)`` (the peer has no bf16 mode): the
  reference of ``ratio_vs_torch_train_bf16``; and the same script in float32
  (``--variant eager``), to show it is as fast as the peer in float32.

A round is: peer float32, ours (``--steps`` steps of every model), torch
bf16 [, torch reference float32]; ``--rounds`` rounds (default 2), so the
order is peer, ours, peer, ours. Every round is printed as it ends (one
``round {...}`` line, with the foreign CPU load of each window: the share of
all cores used by other processes, as the peer's ``cpuwatch`` reports it).
The LAST line is one JSON object:

    {"train_tiles_per_s": ..., "bf16_train_tiles_per_s": ..., "bf16_vs_float32": ...,
     "ratio_vs_torch_train_float32": ..., "ratio_vs_torch_train_bf16": ...,
     "cpu": {"model": ..., "avx512_bf16": ..., "amx_bf16": ...}, "rounds": [...], ...}

Our figures are medians over all timed steps of all rounds; the torch
figures are medians of the per-round medians. ``load_warning`` appears when
any window's foreign load exceeded 0.1. On a loaded 2-core host PyTorch's
OpenMP threads spin and wait for each other, which can slow it several fold
(``--torch-env OMP_WAIT_POLICY=PASSIVE`` avoids that); compare on a quiet
machine. ``train_tiles_per_s`` is the
first precision's ``--variant`` model. ``train_gflops`` counts a training
step as 3x the forward FLOPs (forward + 2x for the backward pass), with the
forward FLOPs summed analytically over the convolutions (2 * multiply-adds;
BN, ReLU, pooling and adds ignored). ``conv_peak_gflops`` is the machine's
forward float32 3x3 convolution rate (``tf.nn.conv2d``, 64 -> 64 channels,
512 x 512), measured in bursts between the training steps, so that
``peak_fraction`` compares like with like on a shared machine.
``mixed_float16`` (loss scaling with Keras's ``LossScaleOptimizer``) is
checked to train on a small tile at the end (``float16_check``; its speed on
a CPU is irrelevant); ``--no-float16-check`` skips it.

Variants (``--variant``, and ``--compare`` for the ones timed side by side):

- ``fused_bn``: ``build_fusionnet`` with every BatchNormalization computing
  with TensorFlow's fused kernel, in float32 or in the half-precision compute
  dtype (``fusionnet_tf.training.fused_batchnorm.use_fused_batchnorm``): what
  ``fusionnet train`` runs (config ``fused_batchnorm: true``);
- ``keras_bn``: Keras's own BatchNormalization computation (in float32
  also under mixed precision, with casts around it);
- ``no_bn``: normalization "none" (an upper bound: what BN costs at all).

Example:
    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/bench_train.py --torch-python /tmp/torchvenv/bin/python
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from hostinfo import cpu_description, foreign_cpu_meter  # benchmarks/hostinfo.py

VARIANTS = ("fused_bn", "keras_bn", "no_bn")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
PRECISION_TAGS = {"float32": "float32", "mixed_bfloat16": "bf16", "mixed_float16": "fp16"}
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_PEER = os.path.join(REPO, "..", "shared", "peers", "torch_fusionnet.py")
FOREIGN_LIMIT = 0.1  # above this share of the cores used by others, a timing is suspect


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="fusionnet", choices=("fusionnet", "unet"),
                        help="Model (default: fusionnet).")
    parser.add_argument("--base-filters", type=int, default=16, help="Default: 16.")
    parser.add_argument("--depth", type=int, default=4, help="Default: 4.")
    parser.add_argument("--tile", type=int, default=512, help="Tile side (default: 512).")
    parser.add_argument("--batch", type=int, default=1, help="Batch size (default: 1).")
    parser.add_argument("--steps", type=int, default=5,
                        help="Timed steps of every model per round (default: 5).")
    parser.add_argument("--warmup", type=int, default=3,
                        help="Untimed steps of every model before the first round (default: 3).")
    parser.add_argument("--rounds", type=int, default=2,
                        help="Rounds (torch, ours, torch bf16) (default: 2).")
    parser.add_argument("--precision", default="float32,mixed_bfloat16",
                        help=f"Comma-separated precisions timed side by side, from {PRECISIONS} "
                             "(default: float32,mixed_bfloat16).")
    parser.add_argument("--torch-python", default=None,
                        help="A Python interpreter that has torch: runs the PyTorch peer and "
                             "references every round (default: none, no PyTorch timing).")
    parser.add_argument("--peer", default=DEFAULT_PEER,
                        help="The independent PyTorch peer script "
                             "(default: ../shared/peers/torch_fusionnet.py beside the repository).")
    parser.add_argument("--torch-steps", type=int, default=6,
                        help="Timed PyTorch steps per subprocess (default: 6).")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                        help="PyTorch threads (default: the number of CPUs).")
    parser.add_argument("--torch-env", action="append", default=[], metavar="KEY=VALUE",
                        help="Environment variable for the PyTorch subprocesses, repeatable; e.g. "
                             "OMP_WAIT_POLICY=PASSIVE, which keeps PyTorch's OpenMP threads from "
                             "spinning when other processes hold the cores (default: none).")
    parser.add_argument("--torch-reference-float32", action=argparse.BooleanOptionalAction,
                        default=True, help="Also time torch_reference.py in float32 each round, "
                                           "to compare it with the peer (default: on).")
    parser.add_argument("--float16-check", action=argparse.BooleanOptionalAction, default=True,
                        help="Check that mixed_float16 with loss scaling trains (64 px tile, "
                             "a few steps) (default: on).")
    parser.add_argument("--jit", action="store_true", help="jit_compile=True (default: off).")
    parser.add_argument("--variant", default="fused_bn", choices=VARIANTS,
                        help="Model-level variant, see the module docstring (default: fused_bn, "
                             "what fusionnet train runs).")
    parser.add_argument("--compare", default="keras_bn",
                        help="Comma-separated variants timed side by side, steps interleaved "
                             "(train_on_batch only), or 'none' (default: keras_bn).")
    parser.add_argument("--fit", action="store_true",
                        help="Time model.fit on a tf.data pipeline instead of train_on_batch "
                             "(first precision and --variant only, no PyTorch rounds).")
    parser.add_argument("--steps-per-execution", type=int, default=1,
                        help="Keras steps_per_execution (default: 1).")
    parser.add_argument("--intra", type=int, default=0,
                        help="intra-op threads, 0 = TensorFlow default (default: 0).")
    parser.add_argument("--inter", type=int, default=0,
                        help="inter-op threads, 0 = TensorFlow default (default: 0).")
    parser.add_argument("--loss", default="bce", help="Loss name (default: bce).")
    args = parser.parse_args()
    args.precisions = [p for p in args.precision.split(",") if p]
    unknown = sorted(set(args.precisions) - set(PRECISIONS))
    if unknown or not args.precisions:
        parser.error(f"--precision: unknown precision(s) {unknown or args.precision!r}; "
                     f"choose from {PRECISIONS}")
    for name in ("steps", "rounds", "torch_steps", "torch_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; received {getattr(args, name)}")
    if args.torch_python and not os.path.isfile(args.peer):
        parser.error(f"--peer: no such file {args.peer!r}")
    bad = [item for item in args.torch_env if "=" not in item or item.startswith("=")]
    if bad:
        parser.error(f"--torch-env: expected KEY=VALUE; received {bad[0]!r}")
    return args


def forward_flops(model):
    """Forward FLOPs of one sample: 2 * multiply-adds of every (transposed) conv."""
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2DTranspose):
            _, h, w, c_in = layer.input.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * kh * kw * c_in * layer.filters
        elif isinstance(layer, layers.Conv2D):
            _, h, w, _ = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1]
            total += 2 * h * w * kh * kw * c_in * layer.filters
    return total


def build(args, variant):
    from fusionnet_tf.models import build_model

    kwargs = dict(base_filters=args.base_filters, depth=args.depth,
                  input_shape=(args.tile, args.tile, 1))
    if variant == "no_bn":
        kwargs["normalization"] = "none"
    model = build_model(args.architecture, **kwargs)
    if variant == "fused_bn":
        from fusionnet_tf.training.fused_batchnorm import use_fused_batchnorm

        use_fused_batchnorm(model)
    return model


def compiled_model(args, variant):
    import keras

    from fusionnet_tf.training.losses import get_loss

    keras.utils.set_random_seed(0)
    model = build(args, variant)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss(args.loss),
                  jit_compile=args.jit, steps_per_execution=args.steps_per_execution)
    return model


def time_fit(model, x, y, args):
    """Per-step seconds of ``model.fit`` on a repeated in-memory batch."""
    import keras
    import tensorflow as tf

    durations = []
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            durations.append((time.perf_counter() - self.start) / args.steps_per_execution)

    total = args.warmup + args.steps
    model.fit(dataset, steps_per_epoch=total // args.steps_per_execution, epochs=1,
              callbacks=[Timer()], verbose=0)
    return durations[args.warmup // args.steps_per_execution:]


def time_interleaved(models, x, y, steps, probe, warmup=0):
    """Per-step seconds of ``train_on_batch`` for each model, steps interleaved.

    One cycle runs one step of every model and one conv-probe burst, so
    machine load affects all of them alike. The first ``warmup`` cycles are
    not timed (and run no probe).

    Returns:
        ``({name: [seconds, ...]}, [probe seconds, ...])``.
    """
    durations = {name: [] for name in models}
    probe_times = []
    for step in range(warmup + steps):
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            if step >= warmup:
                durations[name].append(time.perf_counter() - start)
        if step >= warmup:
            start = time.perf_counter()
            probe()
            probe_times.append(time.perf_counter() - start)
    return durations, probe_times


# --------------------------------------------------------------- host and PyTorch


def torch_commands(args):
    """``{name: argv}`` of the PyTorch runs of one round, in the order they run around ours.

    ``torch_float32_peer`` runs before our steps, the others after them.
    """
    python = args.torch_python
    common = ["--side", str(args.tile), "--batch", str(args.batch), "--repeats",
              str(args.torch_steps), "--threads", str(args.torch_threads),
              "--base-filters", str(args.base_filters), "--mode", "train"]
    reference = os.path.join(HERE, "torch_reference.py")
    commands = {"torch_float32_peer": [
        python, args.peer, "--base", str(args.base_filters), "--size", str(args.tile),
        "--batch", str(args.batch), "--steps", str(args.torch_steps), "--warmup", "2",
        "--mode", "train", "--threads", str(args.torch_threads), "--channels-last"]}
    if "mixed_bfloat16" in args.precisions:
        commands["torch_bf16_reference"] = [python, reference, "--variant", "bf16", *common]
    if args.torch_reference_float32:
        commands["torch_float32_reference"] = [python, reference, "--variant", "eager", *common]
    return commands


def run_torch(argv, env=()):
    """Run one PyTorch timing subprocess; its last JSON line, or ``{"error": ...}``.

    ``env``: extra ``KEY=VALUE`` environment variables for the subprocess.
    """
    environment = dict(os.environ, **dict(item.split("=", 1) for item in env))
    result = subprocess.run(argv, capture_output=True, text=True, env=environment)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {result.returncode}: {tail}"}
    record = json.loads(lines[-1])
    return {"tiles_per_s": record["tiles_per_s"], "sec_per_step": record["sec_per_step"],
            "foreign_cpu": record.get("foreign_cpu"), "threads": record.get("threads"),
            "torch": record.get("torch")}


# --------------------------------------------------------------- models and rounds


def arm_name(precision, variant):
    """``"float32/fused_bn"``, ``"bf16/keras_bn"``, ..."""
    return f"{PRECISION_TAGS[precision]}/{variant}"


def build_arms(args, variants):
    """``{arm name: compiled model}`` for every precision x variant (each under its own policy)."""
    from fusionnet_tf.training.strategy import set_precision

    models = {}
    for precision in args.precisions:
        set_precision(precision)
        for variant in variants:
            models[arm_name(precision, variant)] = compiled_model(args, variant)
    set_precision("float32")
    return models


def run_rounds(args, models, x, y, probe):
    """Warm up, then ``args.rounds`` rounds of (torch peer, ours, torch references).

    Returns:
        ``(durations {arm: [s, ...]} over all rounds, probe seconds, round records)``.
    """
    commands = torch_commands(args) if args.torch_python else {}
    time_interleaved(models, x, y, 0, probe, warmup=args.warmup)
    durations = {name: [] for name in models}
    probe_times, records = [], []
    for number in range(1, args.rounds + 1):
        record = {"round": number}
        if "torch_float32_peer" in commands:
            record["torch_float32_peer"] = run_torch(commands["torch_float32_peer"],
                                                     args.torch_env)
        foreign = foreign_cpu_meter()
        steps, probes = time_interleaved(models, x, y, args.steps, probe)
        record["ours_foreign_cpu"] = foreign()
        record["ours_tiles_per_s"] = {name: round(args.batch / statistics.median(seconds), 3)
                                      for name, seconds in steps.items()}
        for name, seconds in steps.items():
            durations[name].extend(seconds)
        probe_times.extend(probes)
        for name, argv in commands.items():
            if name != "torch_float32_peer":
                record[name] = run_torch(argv, args.torch_env)
        print("round " + json.dumps(record), flush=True)
        records.append(record)
    return durations, probe_times, records


def foreign_loads(record):
    """The foreign CPU loads of one round's timed windows (ours and every PyTorch run)."""
    values = [record.get("ours_foreign_cpu")]
    values += [v.get("foreign_cpu") for v in record.values() if isinstance(v, dict)
               and "tiles_per_s" in v]
    return [value for value in values if value is not None]


def torch_median(records, name):
    """Median ``tiles_per_s`` of the PyTorch run ``name`` over the rounds, or None."""
    values = [r[name]["tiles_per_s"] for r in records if "tiles_per_s" in r.get(name, {})]
    return round(statistics.median(values), 3) if values else None


def ratio(numerator, denominator):
    return round(numerator / denominator, 3) if numerator and denominator else None


def float16_check(args):
    """Train a small ``mixed_float16`` model a few steps (loss scaling); whether it learns.

    Returns:
        dict: ``runs`` (finite losses that go down), the optimizer class, the
        final dynamic loss scale, first and last loss.
    """
    import numpy as np

    from fusionnet_tf.training.strategy import set_precision

    small = argparse.Namespace(**{**vars(args), "tile": 64})
    set_precision("mixed_float16")
    try:
        model = compiled_model(small, "fused_bn")
    finally:
        set_precision("float32")
    rng = np.random.default_rng(1)
    x = rng.random((2, 64, 64, 1), dtype=np.float32)
    y = (x > 0.5).astype(np.float32)
    losses = [float(model.train_on_batch(x, y)) for _ in range(8)]
    optimizer = model.optimizer
    scale = getattr(optimizer, "dynamic_scale", None)
    return {"runs": bool(np.isfinite(losses).all() and losses[-1] < losses[0]),
            "optimizer": type(optimizer).__name__,
            "loss_scale": None if scale is None else float(scale.numpy()),
            "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
            "tile": 64, "steps": len(losses)}


def main():
    args = parse_args()
    import numpy as np
    import tensorflow as tf
    import keras

    from fusionnet_tf.training.strategy import configure_threads
    from probes import make_conv_probe  # benchmarks/probes.py

    configure_threads(args.intra, args.inter)
    compare = [] if args.compare == "none" else [v for v in args.compare.split(",") if v]
    unknown = sorted(set(compare) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--compare: unknown variant(s) {unknown}; choose from {VARIANTS}")
    variants = [args.variant] + [v for v in compare if v != args.variant]
    if args.fit:  # fit times one model only
        args.precisions, variants = args.precisions[:1], variants[:1]
    models = build_arms(args, variants)
    main_arm = arm_name(args.precisions[0], args.variant)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, args.tile, args.tile, 1), dtype=np.float32)
    y = (rng.random((args.batch, args.tile, args.tile, 1)) < 0.22).astype(np.float32)

    probe, probe_flops = make_conv_probe(calls=8)
    records = []
    if args.fit:
        args.steps *= args.rounds
        durations = {main_arm: time_fit(models[main_arm], x, y, args)}
        probe_times = [min(timed(probe) for _ in range(3))]
    else:
        durations, probe_times, records = run_rounds(args, models, x, y, probe)

    flops = forward_flops(models[main_arm])
    conv_peak = probe_flops / min(probe_times) / 1e9

    def tiles_per_s(name):
        return args.batch / statistics.median(durations[name])

    step_s = statistics.median(durations[main_arm])
    result = {
        "train_tiles_per_s": round(tiles_per_s(main_arm), 3),
        "train_gflops": round(3 * flops * tiles_per_s(main_arm) / 1e9, 2),
        "conv_peak_gflops": round(conv_peak, 2),
        "peak_fraction": round(3 * flops * tiles_per_s(main_arm) / 1e9 / conv_peak, 3),
        "forward_gflop_per_tile": round(flops / 1e9, 2),
        "step_ms_median": round(1000 * step_s, 1),
        "step_ms_mean": round(1000 * statistics.fmean(durations[main_arm]), 1),
    }
    result.update(precision_keys(args, durations, tiles_per_s, variants))
    result.update(torch_keys(args, records, durations, tiles_per_s))
    cpu = cpu_description()
    result["cpu"] = cpu
    result["amx_goal_bf16_vs_float32_2x"] = (
        ("met" if (result.get("bf16_vs_float32") or 0) >= 2 else "not met")
        if cpu["amx_bf16"] else "not measurable: no AMX (amx_bf16) on this CPU")
    if args.float16_check:
        result["float16_check"] = float16_check(args)
    result.update({
        "architecture": args.architecture, "base_filters": args.base_filters,
        "depth": args.depth, "tile": args.tile, "batch": args.batch,
        "precisions": args.precisions, "jit_compile": args.jit, "variant": args.variant,
        "fit": args.fit, "steps_per_execution": args.steps_per_execution,
        "intra_op_threads": args.intra, "inter_op_threads": args.inter,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "timed_steps": len(durations[main_arm]), "rounds": records,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "tensorflow": tf.__version__, "keras": keras.__version__, "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
    })
    print(json.dumps(result))


def precision_keys(args, durations, tiles_per_s, variants):
    """Tiles/s of every arm, BN-variant speedups and ``bf16_vs_float32``.

    The first precision keeps the historical key names (``keras_bn_tiles_per_s``,
    ``speedup_vs_keras_bn``); the others are prefixed with their tag
    (``bf16_train_tiles_per_s``, ``bf16_keras_bn_tiles_per_s``, ...).
    """
    keys = {}
    for index, precision in enumerate(args.precisions):
        prefix = "" if index == 0 else PRECISION_TAGS[precision] + "_"
        main = arm_name(precision, args.variant)
        if main not in durations:
            continue
        if index:
            keys[f"{prefix}train_tiles_per_s"] = round(tiles_per_s(main), 3)
        for variant in variants[1:]:
            other = arm_name(precision, variant)
            if other in durations:
                keys[f"{prefix}{variant}_tiles_per_s"] = round(tiles_per_s(other), 3)
                keys[f"{prefix}speedup_vs_{variant}"] = ratio(tiles_per_s(main), tiles_per_s(other))
    float32, bf16 = arm_name("float32", args.variant), arm_name("mixed_bfloat16", args.variant)
    if float32 in durations and bf16 in durations:
        keys["bf16_vs_float32"] = ratio(tiles_per_s(bf16), tiles_per_s(float32))
    return keys


def torch_keys(args, records, durations, tiles_per_s):
    """PyTorch medians and the ``ratio_vs_torch_train_*`` keys (None without PyTorch)."""
    peer = torch_median(records, "torch_float32_peer")
    bf16 = torch_median(records, "torch_bf16_reference")
    ours_float32 = arm_name("float32", args.variant)
    ours_bf16 = arm_name("mixed_bfloat16", args.variant)
    keys = {
        "torch_float32_train_tiles_per_s": peer,
        "torch_float32_source": f"independent peer {os.path.relpath(args.peer, REPO)} --mode train "
                                "--channels-last" if args.torch_python else None,
        "torch_bf16_train_tiles_per_s": bf16,
        "torch_bf16_source": "benchmarks/torch_reference.py --mode train --variant bf16 (this "
                             "project's plain-PyTorch FusionNet, torch.autocast('cpu', "
                             "torch.bfloat16); the peer has no bf16 mode)"
                             if args.torch_python else None,
        "ratio_vs_torch_train_float32": ratio(
            tiles_per_s(ours_float32) if ours_float32 in durations else None, peer),
        "ratio_vs_torch_train_bf16": ratio(
            tiles_per_s(ours_bf16) if ours_bf16 in durations else None, bf16),
    }
    if args.torch_python:
        keys["torch_env"] = args.torch_env
    loads = [value for r in records for value in foreign_loads(r)]
    suspect = sum(load > FOREIGN_LIMIT for load in loads)
    keys["max_foreign_cpu"] = max(loads) if loads else None
    if suspect:
        keys["load_warning"] = (f"{suspect} of {len(loads)} timed windows had foreign CPU load > "
                                f"{FOREIGN_LIMIT}: other processes shared the cores, ratios are "
                                "suspect (PyTorch's spinning OpenMP threads suffer most)")
    if args.torch_python and args.torch_reference_float32:
        reference = torch_median(records, "torch_float32_reference")
        keys["torch_reference_float32_train_tiles_per_s"] = reference
        keys["torch_reference_vs_peer_float32"] = ratio(reference, peer)
    return keys


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
