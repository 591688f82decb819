"""Where the 3D FusionNet's inference time goes, and its fraction of this CPU's conv peak.

Issue 22 asks for the 3D network at >= 60% of this CPU's measured conv peak.
This script measures it for the shipped SNEMI3D model (or ``--model``) on a
shared host, honestly: every timed network call is sandwiched between two
calls of the peak probe (``probes.make_peak_probe``: a 'SAME' Conv3D 3x3x3,
64 -> 64 channels on 16 x 64 x 64, in the call's compute type), in the
same process (``probes.sandwiched``), and the fraction of peak is the call's
conv GFLOP/s (``conv_flops``) over the mean of those two probe rates, the
median over ``--rounds`` calls. Two clocks: ``fraction`` on wall time
(what a user gets; on a shared host it swings with the others' load) and
``fraction_cpu`` on process CPU time (load-independent, but it flatters code
that leaves a core idle; see ``probes.timed_rates``). Absolute GFLOP/s move
2-4x with the host's load; the fractions are the figures to compare.

Three parts, each engine in its own process (TensorFlow shares oneDNN
primitives between graphs by shape, so plain and frozen in one process
disturb each other):

1. ``engines``: the reference tile (16 x 256 x 256, batch 1, float32) on
   engine plain, frozen and xla (``Predictor``'s ``KerasFunction``), with
   the largest difference of each engine's output from plain's;
2. ``cases`` (on ``--sweep-engine``): tile shapes, several tiles per call,
   and ``mixed_bfloat16`` (its fraction against the bfloat16 probe, its
   output difference against float32);
3. ``levels``: where the time goes. ``in_model``: one call of the reference
   tile traced with ``tf.profiler``, op time (fastest of ``--trace-calls``)
   summed per level (``enc{i}``/``dec{i}`` incl. ``dec{i}_up``, ``bridge``,
   ``output``), with that level's conv FLOPs and rate; ``isolated``: one
   Conv3D + bias + ReLU with constant weights (as the folded model runs it)
   of each level's kernel, channels and shape, float32 and bfloat16, against
   the probe. The FLOP-weighted harmonic mean of the isolated rates is the
   fraction the whole network could reach if nothing but its convolutions
   cost time (``convs_only_bound``).

Run: ``nice -n 5 python benchmarks/profile_inference3d.py`` (about 5-10 min on
2 busy cores; ``--rounds 2 --tiles 16x256x256`` for a quick look). Prints a
table on stderr, then one JSON line.
"""

import argparse
import collections
import glob
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # benchmarks/probes.py
MARK = "@@profile3d"
REFERENCE_TILE = (16, 256, 256)
DEFAULT_TILES = "16x256x256,16x384x384,16x512x512,8x512x512,32x256x256"
ENGINES = ("plain", "frozen", "xla")
PROBE = "conv3d 3x3x3 64ch 16x64x64"  # probes.make_peak_probe
PROBE_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16"}
ISOLATED_GFLOP = 1.5  # repeat an isolated conv until one measurement holds about this much work


def default_model():
    from fusionnet_tf.pretrained import REGISTRY

    return str(REGISTRY["snemi3d"].weights_path)


def parse_tile(text):
    """``"16x256x256"`` -> (16, 256, 256)."""
    try:
        sides = tuple(int(side) for side in text.lower().split("x"))
    except ValueError:
        sides = ()
    if len(sides) != 3 or min(sides) < 1:
        raise ValueError(f"a tile is ZxYxX, e.g. 16x256x256; received {text!r}")
    return sides


# === Timing (in a worker process) ===

def peak_probe(dtype):
    """The peak probe of one compute type (float32 or bfloat16), one conv per run."""
    from probes import make_peak_probe

    return make_peak_probe(dtype)


def network(model, engine, precision):
    """``Predictor``'s network for ``engine`` and ``precision`` (any tile shape)."""
    from fusionnet_tf.inference.predictor import KerasFunction

    return KerasFunction(model, None, jit_compile=engine == "xla", precision=precision,
                         constant_weights=engine == "frozen")


MEDIANS = ("gflops", "probe_gflops", "fraction", "fraction_cpu", "cpu_gflops", "probe_cpu_gflops")


def run_cases(model, engine, cases, rounds, save_dir):
    """Each case ``{"tile", "batch", "precision"}`` timed on ``engine``; interleaved over rounds.

    Every round runs each case once, between two peak-probe calls of its
    compute type (``probes.sandwiched``), so all cases see the same load.
    """
    import numpy as np

    from fusionnet_tf.inference.optimize import conv_flops
    from probes import sandwiched

    networks, probes, prepared = {}, {}, []
    for case in cases:
        precision = case["precision"]
        if precision not in networks:
            networks[precision] = network(model, engine, precision)
            probes[precision] = peak_probe(PROBE_DTYPE[precision])
        tile, batch = tuple(case["tile"]), case["batch"]
        x = np.random.default_rng(0).random((batch,) + tile + (1,), np.float32)
        run = networks[precision]
        began = time.perf_counter()
        output = run(x)  # tracing, XLA compilation, oneDNN kernel selection
        setup = time.perf_counter() - began
        if save_dir and tile == REFERENCE_TILE and batch == 1:
            np.save(os.path.join(save_dir, f"{engine}-{precision}.npy"), output)
        flops = conv_flops(model, tile[1], tile[2], batch=batch, depth=tile[0])
        prepared.append((case, (lambda run=run, x=x: run(x)), flops, setup))
    rows = [[] for _ in prepared]
    for _ in range(rounds):
        for row, (case, function, flops, _) in zip(rows, prepared):
            row.append(sandwiched(function, flops, probes[case["precision"]], 1))
    results = []
    for row, (case, _, flops, setup) in zip(rows, prepared):
        medians = {key: round(statistics.median(r[key] for r in row), 3) for key in MEDIANS}
        results.append(dict(
            case, engine=engine, conv_gflop_per_call=round(flops / 1e9, 1),
            first_call_s=round(setup, 2),
            probe=f"{PROBE} {PROBE_DTYPE[case['precision']]}", **medians,
            fractions=[r["fraction"] for r in row],
            voxels_per_second=round(math.prod(case["tile"]) * case["batch"]
                                    * medians["gflops"] * 1e9 / flops)))
    return results


# === Per-level breakdown ===

def level_of(layer_name):
    """``enc3_res_conv1`` -> ``"level3"``, ``dec2_up_bn`` -> ``"level2"``, ``bridge_*``, ``output``."""
    head = layer_name.split("_")[0]
    if head[:3] in ("enc", "dec") and head[3:].isdigit():
        return f"level{head[3:]}"
    return "bridge" if head == "bridge" else "output"


def level_shapes(model, tile):
    """``{level: (spatial shape, channels, kernel)}`` of the model's conv_in layers at ``tile``."""
    shapes, shape, level = {}, tuple(tile), 1
    while True:
        name = f"enc{level}" if _has_layer(model, f"enc{level}_conv_in") else "bridge"
        conv = model.get_layer(f"{name}_conv_in")
        shapes["bridge" if name == "bridge" else f"level{level}"] = (
            shape, conv.filters, tuple(conv.kernel_size))
        if name == "bridge":
            return shapes
        pool = model.get_layer(f"enc{level}_pool").pool_size
        shape = tuple(s // p for s, p in zip(shape, pool))
        level += 1


def _has_layer(model, name):
    return any(layer.name == name for layer in model.layers)


def trace_op_times(function, calls):
    """``{op name: fastest ms}`` over ``calls`` calls of ``function`` in one ``tf.profiler`` trace."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    folder = tempfile.mkdtemp(prefix="fusionnet_profile3d_")
    tf.profiler.experimental.start(folder)
    for _ in range(calls):
        function()
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0], "rb") as trace:
        space.ParseFromString(trace.read())
    shutil.rmtree(folder, ignore_errors=True)
    times = collections.defaultdict(list)
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith(("tf_Compute", "tf_numa", "tf_inter")):
                continue
            for event in line.events:
                metadata = plane.event_metadata[event.metadata_id]
                if metadata.display_name:  # op events carry their type
                    times[(metadata.name, metadata.display_name)].append(event.duration_ps / 1e9)
    return {key: min(values) for key, values in times.items()}


def in_model_levels(model, engine, trace_calls):
    """Where one reference-tile call spends its time, per level (``tf.profiler`` op times).

    Op times are the fastest of ``trace_calls`` calls per op; on a shared host
    they include time the op was preempted, so the shares are the figures, not
    the absolute rates. ``relative_rate`` = the level's share of conv FLOPs
    over its share of time: 1 = as fast as the network on average; the
    driver turns it into ``fraction`` with the reference tile's measured
    fraction of peak.
    """
    import numpy as np

    from fusionnet_tf.inference.optimize import conv_flops_by_layer

    run = network(model, engine, "float32")
    x = np.random.default_rng(0).random((1,) + REFERENCE_TILE + (1,), np.float32)
    run(x)
    ops = trace_op_times(lambda: run(x), trace_calls)
    flops = collections.Counter()
    for name, value in conv_flops_by_layer(model, *REFERENCE_TILE[1:], depth=REFERENCE_TILE[0]).items():
        flops[level_of(name)] += value
    conv_ms, other_ms = collections.Counter(), collections.Counter()
    for (name, kind), ms in ops.items():
        target = conv_ms if "Conv3D" in kind else other_ms
        target[level_of(name.split("/")[0])] += ms
    total_ms = sum(conv_ms.values()) + sum(other_ms.values())
    total_flops = sum(flops.values())
    levels = {}
    for level in sorted(set(flops) | set(other_ms), key=_level_order):
        time_share = (conv_ms[level] + other_ms[level]) / total_ms
        levels[level] = {
            "conv_gflop": round(flops[level] / 1e9, 2),
            "flop_share": round(flops[level] / total_flops, 3),
            "conv_ms": round(conv_ms[level], 1), "other_ms": round(other_ms[level], 1),
            "time_share": round(time_share, 3),
            "relative_rate": round(flops[level] / total_flops / time_share, 3)}
    return {"engine": engine, "tile": list(REFERENCE_TILE), "ops_total_ms": round(total_ms, 1),
            "levels": levels}


def _level_order(level):
    return (0, int(level[5:])) if level.startswith("level") else (1 if level == "bridge" else 2, 0)


def isolated_conv(shape, channels, kernel, dtype):
    """One Conv3D + bias + ReLU, (1, *shape, channels) -> channels, constant weights: ``(run, flops)``."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernel_np = rng.standard_normal(kernel + (channels, channels)).astype(np.float32) * 0.1
    bias_np = rng.standard_normal(channels).astype(np.float32)
    x = tf.cast(tf.constant(rng.random((1,) + shape + (channels,), np.float32)), dtype)

    @tf.function
    def conv(t):
        y = tf.nn.conv3d(t, tf.cast(tf.constant(kernel_np), dtype), [1] * 5, "SAME")
        return tf.nn.relu(tf.nn.bias_add(y, tf.cast(tf.constant(bias_np), dtype)))

    conv(x).numpy()
    flops = 2 * math.prod(kernel) * channels * channels * math.prod(shape)
    repeats = max(1, round(ISOLATED_GFLOP * 1e9 / flops))

    def run():
        for _ in range(repeats):
            conv(x).numpy()

    return run, flops * repeats


def isolated_levels(model, rounds, dtypes=("float32", "bfloat16")):
    """Each level's conv alone, per compute type, sandwiched between probes of that type."""
    from probes import sandwiched

    shapes = level_shapes(model, REFERENCE_TILE)
    result = {}
    for dtype in dtypes:
        probe = peak_probe(dtype)
        rows = {}
        for level, (shape, channels, kernel) in shapes.items():
            run, flops = isolated_conv(shape, channels, kernel, dtype)
            rows[level] = dict(shape=list(shape), channels=channels, kernel=list(kernel),
                               **sandwiched(run, flops, probe, rounds))
        result[dtype] = rows
    return result


def convs_only_bound(levels_flops, fractions):
    """FLOP-weighted harmonic mean of per-level fractions: the network's fraction if only convs cost."""
    total = sum(levels_flops.values())
    return total / sum(flops / fractions[level] for level, flops in levels_flops.items())


# === Worker and driver ===

def worker(spec):
    """Run one engine's measurements in this process; print ``MARK`` + a JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fusionnet_tf.inference import load_model

    model = load_model(spec["model"])
    out = {"cases": run_cases(model, spec["engine"], spec["cases"], spec["rounds"],
                              spec.get("save_dir"))}
    if spec.get("levels"):
        out["in_model"] = in_model_levels(model, spec["engine"], spec["trace_calls"])
        out["isolated"] = isolated_levels(model, spec["rounds"])
    print(f"{MARK} {json.dumps(out)}", flush=True)


def run_worker(spec):
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"error: the {spec['engine']} worker failed: {last}")
    line = next(line for line in done.stdout.splitlines() if line.startswith(MARK))
    return json.loads(line[len(MARK) + 1:])


def max_difference(save_dir, name, reference):
    import numpy as np

    a = np.load(os.path.join(save_dir, f"{name}.npy"))
    b = np.load(os.path.join(save_dir, f"{reference}.npy"))
    return float(np.abs(a - b).max())


def host_load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_flags():
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(f for f in line.split(":", 1)[1].split() if f.startswith(("avx512", "amx")))
    return sorted(flags)


def sweep_cases(args):
    reference = {"tile": list(REFERENCE_TILE), "batch": 1, "precision": "float32"}
    cases = [dict(reference, tile=list(parse_tile(t))) for t in args.tiles.split(",") if t]
    cases += [dict(reference, batch=b) for b in args.batches if b != 1]
    if args.bf16:
        cases.append(dict(reference, precision="mixed_bfloat16"))
    if reference not in cases:
        cases.insert(0, reference)
    return cases


def print_table(result):
    def row(r):
        tile = "x".join(map(str, r["tile"]))
        return (f"  {r['engine']:6s} {r['precision']:14s} {tile:>12s} b{r['batch']}  "
                f"{r['gflops']:6.1f} GFLOP/s wall (probe {r['probe_gflops']:6.1f}), "
                f"{r['cpu_gflops']:6.1f} per 2 CPU-s (probe {r['probe_cpu_gflops']:6.1f})  "
                f"fraction {r['fraction']:.3f} wall, {r['fraction_cpu']:.3f} cpu  "
                f"{r['voxels_per_second'] / 1e3:5.0f} kvox/s")
    print("engines (each in its own process):", file=sys.stderr)
    for r in result["engines"].values():
        print(row(r), file=sys.stderr)
    print(f"cases (engine {result['sweep_engine']}):", file=sys.stderr)
    for r in result["cases"]:
        print(row(r), file=sys.stderr)
    if "in_model" in result:
        print("level: FLOP share, time share in the model (fraction wall/cpu) | isolated conv "
              "fraction float32 wall/cpu | bfloat16 wall/cpu", file=sys.stderr)
        for level, v in result["in_model"]["levels"].items():
            iso = result["isolated"]["float32"].get(level, {})
            iso16 = result["isolated"]["bfloat16"].get(level, {})
            print(f"  {level:7s} {v['flop_share']:.3f} {v['time_share']:.3f} "
                  f"({v.get('fraction')}/{v.get('fraction_cpu')}) | "
                  f"{iso.get('fraction')}/{iso.get('fraction_cpu')} | "
                  f"{iso16.get('fraction')}/{iso16.get('fraction_cpu')}", file=sys.stderr)
        print(f"  convs-only bound: {result['convs_only_bound']}", file=sys.stderr)


def add_level_fractions(in_model, reference):
    """Each level's fraction of peak in the model: relative rate x the reference tile's fraction."""
    for values in in_model["levels"].values():
        for key in ("fraction", "fraction_cpu"):
            values[key] = round(values["relative_rate"] * reference[key], 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="3D .keras model (default: the shipped snemi3d model).")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per case (default: 3)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="engines compared on the reference tile (default: plain,frozen,xla)")
    parser.add_argument("--sweep-engine", default=None,
                        help="engine of the tile/batch/precision sweep (default: the engine with "
                             "the highest median CPU-time fraction)")
    parser.add_argument("--tiles", default=DEFAULT_TILES,
                        help=f"tiles ZxYxX of the sweep (default: {DEFAULT_TILES})")
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 2, 4],
                        help="tiles per call at the reference tile (default: 1,2,4)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="skip the mixed_bfloat16 case")
    parser.add_argument("--no-levels", dest="levels", action="store_false",
                        help="skip the per-level breakdown")
    parser.add_argument("--trace-calls", type=int, default=2,
                        help="calls in the profiler trace; op times are the fastest (default: 2)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    model = args.model or default_model()
    if not os.path.isfile(model):
        print(f"error: --model {model!r} is not a file", file=sys.stderr)
        sys.exit(2)
    try:
        for tile in args.tiles.split(","):
            parse_tile(tile)
    except ValueError as exc:
        print(f"error: --tiles: {exc}", file=sys.stderr)
        sys.exit(2)
    engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in engines + [args.sweep_engine or "plain"] if e not in ENGINES]
    if unknown:
        print(f"error: unknown engine {unknown[0]!r} (one of {', '.join(ENGINES)})", file=sys.stderr)
        sys.exit(2)
    began = time.perf_counter()
    save_dir = tempfile.mkdtemp(prefix="fusionnet_profile3d_out_")
    result = {"model": model, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "cpu_flags": cpu_flags(), "load_before": host_load(), "rounds": args.rounds}
    reference = {"tile": list(REFERENCE_TILE), "batch": 1, "precision": "float32"}
    try:
        result["engines"] = {}
        for engine in engines:
            out = run_worker({"model": model, "engine": engine, "cases": [reference],
                              "rounds": args.rounds, "save_dir": save_dir})
            result["engines"][engine] = out["cases"][0]
        if "plain" in engines:
            for engine in engines:
                result["engines"][engine]["max_abs_diff_vs_plain"] = max_difference(
                    save_dir, f"{engine}-float32", "plain-float32")
        sweep = args.sweep_engine or max(
            result["engines"], key=lambda e: result["engines"][e]["fraction_cpu"])
        result["sweep_engine"] = sweep
        out = run_worker({"model": model, "engine": sweep, "cases": sweep_cases(args),
                          "rounds": args.rounds, "save_dir": save_dir, "levels": args.levels,
                          "trace_calls": args.trace_calls})
        result["cases"] = out["cases"]
        if args.bf16:
            result["bf16_max_abs_diff_vs_float32"] = max_difference(
                save_dir, f"{sweep}-mixed_bfloat16", f"{sweep}-float32")
        if args.levels:
            result["in_model"], result["isolated"] = out["in_model"], out["isolated"]
            reference_case = next(c for c in out["cases"] if c["tile"] == list(REFERENCE_TILE)
                                  and c["batch"] == 1 and c["precision"] == "float32")
            add_level_fractions(result["in_model"], reference_case)
            flops = {level: v["conv_gflop"] for level, v in out["in_model"]["levels"].items()
                     if level in out["isolated"]["float32"]}
            result["convs_only_bound"] = {
                f"{dtype} {key}": round(convs_only_bound(
                    flops, {level: rows[level][key] for level in flops}), 3)
                for dtype, rows in out["isolated"].items() for key in ("fraction", "fraction_cpu")}
    finally:
        shutil.rmtree(save_dir, ignore_errors=True)
    result["load_after"] = host_load()
    result["seconds"] = round(time.perf_counter() - began, 1)
    print_table(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
