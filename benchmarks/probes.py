"""Machine-rate probes shared by the benchmarks (imported as ``probes`` from this folder)."""


def make_conv_probe(calls, channels=64, side=512):
    """``calls`` back-to-back traced 3x3 'SAME' convs, (1, side, side, channels) -> channels.

    The benchmarks run it between (or alternating with) the timed model
    calls, so that the machine's sustained convolution rate and the model are
    measured under the same load.

    Returns:
        ``(run, flops)``: a function running the convs and their total FLOPs.
    """
    import tensorflow as tf

    x = tf.random.uniform((1, side, side, channels))
    kernel = tf.random.uniform((3, 3, channels, channels))
    conv = tf.function(lambda t: tf.nn.conv2d(t, kernel, 1, "SAME"))
    conv(x).numpy()

    def run():
        for _ in range(calls):
            conv(x).numpy()

    return run, calls * 2 * 9 * channels * channels * side * side


def make_conv3d_probe(calls, channels=32, shape=(16, 128, 128), kernel=(3, 3, 3),
                      dtype="float32"):
    """``calls`` back-to-back traced 'SAME' Conv3Ds, (1, *shape, channels) -> channels.

    The 3D twin of ``make_conv_probe``: a large dense convolution that the
    3D FusionNet's throughput is compared with. ``dtype`` ``"float32"``
    (default) or ``"bfloat16"`` (input and kernel in bfloat16: the peak that
    a ``mixed_bfloat16`` model is compared with).

    Returns:
        ``(run, flops)``: a function running the convs and their total FLOPs.
    """
    import math

    import tensorflow as tf

    x = tf.cast(tf.random.uniform((1,) + tuple(shape) + (channels,)), dtype)
    weights = tf.cast(tf.random.uniform(tuple(kernel) + (channels, channels)), dtype)
    conv = tf.function(lambda t: tf.nn.conv3d(t, weights, [1] * 5, "SAME"))
    conv(x).numpy()

    def run():
        for _ in range(calls):
            conv(x).numpy()

    return run, calls * 2 * math.prod(kernel) * channels * channels * math.prod(shape)


def make_peak_probe(dtype="float32"):
    """This CPU's conv peak probe: one 'SAME' Conv3D 3x3x3, 64 -> 64 channels on 16 x 64 x 64.

    Measured per CPU-second on 2 AVX-512 cores (2026-12-05), the fastest
    of the shapes tried, within 2%: Conv3D 64-128 channels 234-238 GFLOP/s
    float32, 469-476 bfloat16; Conv3D 32 channels 16 x 128 x 128 (the
    earlier probe) 210 / 446; Conv2D 3x3 64 channels 512 x 512 204,
    128 channels 214. About 15 GFLOP per call.

    Returns:
        ``(run, flops)`` as ``make_conv3d_probe(1, ...)``.
    """
    return make_conv3d_probe(1, channels=64, shape=(16, 64, 64), dtype=dtype)


def timed_rates(function, flops, cores=None):
    """Run ``function`` once: ``(wall GFLOP/s, CPU GFLOP/s)`` of its ``flops``.

    The CPU rate is ``flops`` over the process's CPU seconds (all threads)
    times ``cores`` (default: this machine's CPU count): the rate with every
    core to itself. On a shared host the wall rate follows the other
    processes' load; the CPU rate hardly does, but it flatters code that
    leaves cores idle (a single-threaded stretch costs half the CPU time of
    the same stretch on two busy cores).
    """
    import os
    import time

    cores = cores or os.cpu_count()
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return flops / wall / 1e9, flops / max(cpu, 1e-9) * cores / 1e9


def sandwiched(function, flops, probe, rounds):
    """Time ``function`` ``rounds`` times, each call between two calls of the peak ``probe``.

    The honest fraction of peak on a shared host: the probe runs right before
    and right after every timed call, in the same process, so both see the
    same load.

    Args:
        function: no-argument callable, e.g. one network call on a fixed batch.
        flops: int. Convolution FLOPs of one call.
        probe: ``(run, probe_flops)``, e.g. ``make_peak_probe()``.
        rounds: int. Timed calls.

    Returns:
        dict of floats: ``gflops`` (median wall rate), ``probe_gflops``
        (median), ``fraction`` (median over calls of the call's wall rate /
        mean of the two probes' wall rates), ``fraction_cpu`` (the same with
        CPU rates, see ``timed_rates``), ``fractions`` (per call, wall) and
        ``cpu_gflops``, ``probe_cpu_gflops`` (medians).
    """
    import statistics

    run, probe_flops = probe
    rows = []
    for _ in range(rounds):
        before = timed_rates(run, probe_flops)
        rates = timed_rates(function, flops)
        after = timed_rates(run, probe_flops)
        rows.append((rates, before, after))

    def median(values):
        return round(statistics.median(values), 3)

    return {
        "gflops": median([r[0][0] for r in rows]),
        "probe_gflops": median([v for r in rows for v in (r[1][0], r[2][0])]),
        "fraction": median([r[0][0] * 2 / (r[1][0] + r[2][0]) for r in rows]),
        "fraction_cpu": median([r[0][1] * 2 / (r[1][1] + r[2][1]) for r in rows]),
        "fractions": [round(r[0][0] * 2 / (r[1][0] + r[2][0]), 3) for r in rows],
        "cpu_gflops": median([r[0][1] for r in rows]),
        "probe_cpu_gflops": median([v for r in rows for v in (r[1][1], r[2][1])]),
    }
