"""
Title: Op-by-op profile of one FusionNet forward pass, TensorFlow against PyTorch
Description: Profiles whole-slice (512x512) float32 inference of FusionNet
at ``--base`` filters three ways, each in its own process:

- ``tf-variables``: the BN-folded inference copy in a ``tf.function`` with the
  weights as variables (how ``Predictor`` ran until 2026-12-02);
- ``tf-constants``: the same copy through ``inference_function`` (weights as
  graph constants);
- ``torch`` (with ``--torch-python``): the independent PyTorch peer
  (``--peer``), eval mode, ``inference_mode``, channels-last.

Each process runs with ``ONEDNN_VERBOSE=1``: every oneDNN primitive (kernel
implementation, memory layouts of source, weights and destination, fused
post-ops, milliseconds) is recorded for ``--calls`` timed calls after two
warm-ups. The report gives, per kernel kind and shape, the time summed over
one pass, taking for each primitive its fastest call (the machine is shared:
the minimum is the least disturbed). The TensorFlow processes also run a
``tf.profiler`` trace and the PyTorch one ``torch.profiler``, for the ops that
are not oneDNN primitives (adds, ReLUs, pooling, sigmoid).

Run: ``python benchmarks/profile_inference.py --base 64 --torch-python /tmp/torchvenv/bin/python``
(about 3 minutes on 2 cores). Prints tables, then one JSON line.
"""

import argparse
import collections
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PEER = os.path.join(HERE, "..", "..", "shared", "peers", "torch_fusionnet.py")
SIDE = 512
MARK = "@@profile"

TORCH_WORKER = r"""
import json, sys, time
import torch
sys.path.insert(0, sys.argv[1])
from torch_fusionnet import FusionNet
base, calls = int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4])); torch.set_num_interop_threads(1)
torch.manual_seed(0)
model = FusionNet(1, 1, base).eval().to(memory_format=torch.channels_last)
x = torch.rand(1, 1, %d, %d).contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    for _ in range(2):
        model(x)
    for i in range(calls):
        print("%s start", flush=True)
        start = time.perf_counter()
        float(model(x).sum())
        print("%s end", round(time.perf_counter() - start, 4), flush=True)
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
ops = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
print("%s ops", json.dumps(ops), flush=True)
""" % (SIDE, SIDE, MARK, MARK, MARK)


# === Workers (TensorFlow) ===

def tf_worker(mode, base_filters, calls):
    """Run in a child process: warm up, time ``calls`` passes between markers, then trace one."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, HERE)
    from bench_inference import bench_model  # noqa: E402  (benchmarks/bench_inference.py)
    from fusionnet_tf.inference.optimize import inference_copy, inference_function

    copy = inference_copy(bench_model(base_filters))
    run = inference_function(copy, SIDE, constant_weights=mode == "tf-constants")
    x = tf.constant(np.random.default_rng(0).random((1, SIDE, SIDE, 1), np.float32))
    for _ in range(2):
        run(x).numpy()
    for _ in range(calls):
        print(f"{MARK} start", flush=True)
        start = time.perf_counter()
        run(x).numpy()
        print(f"{MARK} end {time.perf_counter() - start:.4f}", flush=True)
    print(f"{MARK} ops {json.dumps(tf_op_times(lambda: run(x).numpy()))}", flush=True)


def tf_op_times(function):
    """Milliseconds per TensorFlow op type over one call of ``function`` (``tf.profiler`` trace)."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    folder = tempfile.mkdtemp(prefix="fusionnet_profile_")
    tf.profiler.experimental.start(folder)
    function()
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0], "rb") as trace:
        space.ParseFromString(trace.read())
    shutil.rmtree(folder, ignore_errors=True)
    times = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith(("tf_Compute", "tf_numa", "tf_inter")):
                continue
            for event in line.events:
                kind = plane.event_metadata[event.metadata_id].display_name
                if kind:  # op events carry their type; executor bookkeeping does not
                    times[kind] += event.duration_ps / 1e9
    return dict(times)


# === Parsing ===

def parse_run(stdout):
    """Split a worker's output into per-call oneDNN records, wall times and op times.

    Returns:
        ``(calls, walls, ops)``: a list per call of ``(key, ms)`` for every
        oneDNN primitive executed, the wall seconds of each call and the
        worker's op-type table (ms).
    """
    calls, walls, ops, current = [], [], {}, None
    for line in stdout.splitlines():
        if line.startswith(MARK):
            _, what, *rest = line.split(" ", 2)
            if what == "start":
                current = []
            elif what == "end":
                calls.append(current)
                walls.append(float(rest[0]))
                current = None
            elif what == "ops":
                ops = json.loads(rest[0])
        elif current is not None and ",primitive,exec," in line:
            current.append(primitive_key(line))
    return calls, walls, ops


def primitive_key(line):
    """``((kind, implementation, problem, weights layout, post-ops), ms)`` of one verbose line."""
    fields = line.split(",")
    # onednn_verbose,v1,primitive,exec,cpu,KIND,IMPL,PROP,MEMORY,ATTRS,AUX,PROBLEM,MS
    kind, impl, memory, attrs, problem = fields[5], fields[6], fields[8], fields[9], fields[-2]
    # a memory descriptor reads ARG:TYPE:PROPS:blocked:LAYOUT:...; weights in HWIO read cdba
    weights = next((m.split(":")[4] for m in memory.split() if m.startswith("wei:")), "")
    post_ops = "relu" if "eltwise_relu" in attrs else ""
    return (kind, impl, problem, weights, post_ops), float(fields[-1])


def fastest_pass(calls):
    """Per-primitive minimum over the calls, summed by key: ``{key: (count, ms)}``."""
    usable = [c for c in calls if len(c) == len(calls[0])]
    table = collections.OrderedDict()
    for index, (key, _) in enumerate(usable[0]):
        best = min(call[index][1] for call in usable)
        count, total = table.get(key, (0, 0.0))
        table[key] = (count + 1, total + best)
    return table


def short_problem(problem):
    """``mb1_ic64oc64_ih512oh512kh3sh1...`` -> ``ic64oc64 @512 k3s1`` (other problems as they are)."""
    channels = re.search(r"ic\d+(oc\d+)?", problem)
    size = re.search(r"ih(\d+)", problem)
    kernel = re.search(r"kh(\d+)sh(\d+)", problem)
    if not (channels and size and kernel):
        return problem
    return f"{channels.group(0)} @{size.group(1)} k{kernel.group(1)}s{kernel.group(2)}"


# === Main ===

def run_worker(command, env_extra):
    env = dict(os.environ, **env_extra)
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return parse_run(done.stdout)


def report(name, calls, walls, ops, top):
    table = fastest_pass(calls)
    total = sum(ms for _, ms in table.values())
    wall = min(walls)
    print(f"\n== {name}: fastest call {wall:.3f} s (median {sorted(walls)[len(walls) // 2]:.3f}); "
          f"oneDNN primitives {total / 1e3:.3f} s (per-primitive minimum)")
    by_kind = collections.Counter()
    for (kind, impl, *_), (_, ms) in table.items():
        by_kind[f"{kind}:{impl.split(':')[0]}"] += ms
    print("   by kernel: " + ", ".join(f"{k} {v:.0f} ms" for k, v in by_kind.most_common()))
    print(f"   {'ms':>8} {'n':>3}  kernel, problem, weights layout, post-ops")
    rows = sorted(table.items(), key=lambda item: -item[1][1])[:top]
    for (kind, impl, problem, weights, post), (count, ms) in rows:
        print(f"   {ms:8.1f} {count:3d}  {kind} {impl.split(':')[0]} {short_problem(problem)} "
              f"wei={weights or '-'} {post}")
    if ops:
        print("   ops (profiler, one call, ms): " + ", ".join(
            f"{k} {v:.0f}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:top]))
    return {"fastest_call_s": round(wall, 4), "walls": walls, "onednn_s": round(total / 1e3, 4),
            "by_kernel_ms": {k: round(v, 1) for k, v in by_kind.items()},
            "top": [[kind, impl, problem, weights, post, count, round(ms, 1)]
                    for (kind, impl, problem, weights, post), (count, ms) in rows],
            "ops_ms": {k: round(v, 1) for k, v in ops.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=int, default=64, help="base filters (default: 64)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per process (default: 3)")
    parser.add_argument("--top", type=int, default=12, help="rows per table (default: 12)")
    parser.add_argument("--torch-python", default=None, metavar="PY",
                        help="Python with torch: also profile the PyTorch peer (default: not run).")
    parser.add_argument("--peer", default=DEFAULT_PEER, metavar="PATH",
                        help="the peer script (default: ../shared/peers/torch_fusionnet.py).")
    parser.add_argument("--worker", choices=("tf-variables", "tf-constants"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return tf_worker(args.worker, args.base, args.calls)
    if args.torch_python and not os.path.isfile(args.peer):
        print(f"error: --peer {args.peer!r} is not a file", file=sys.stderr)
        sys.exit(2)

    verbose = {"ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = {"base_filters": args.base, "side": SIDE}
    for mode in ("tf-variables", "tf-constants"):
        calls, walls, ops = run_worker(
            [sys.executable, os.path.abspath(__file__), "--worker", mode, "--base", str(args.base),
             "--calls", str(args.calls)], verbose)
        result[mode] = report(mode, calls, walls, ops, args.top)
    if args.torch_python:
        peer = os.path.abspath(args.peer)
        calls, walls, ops = run_worker(
            [args.torch_python, "-c", TORCH_WORKER, os.path.dirname(peer), str(args.base),
             str(args.calls), str(os.cpu_count())], verbose)
        result["torch"] = report("torch (peer)", calls, walls, ops, args.top)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
