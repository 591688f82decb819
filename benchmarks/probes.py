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


def make_conv3d_probe(calls, channels=32, shape=(16, 128, 128), kernel=(3, 3, 3)):
    """``calls`` back-to-back traced 'SAME' Conv3Ds, (1, *shape, channels) -> channels, float32.

    The 3D twin of ``make_conv_probe``: a large dense convolution that the
    3D FusionNet's throughput is compared with.

    Returns:
        ``(run, flops)``: a function running the convs and their total FLOPs.
    """
    import math

    import tensorflow as tf

    x = tf.random.uniform((1,) + tuple(shape) + (channels,))
    weights = tf.random.uniform(tuple(kernel) + (channels, channels))
    conv = tf.function(lambda t: tf.nn.conv3d(t, weights, [1] * 5, "SAME"))
    conv(x).numpy()

    def run():
        for _ in range(calls):
            conv(x).numpy()

    return run, calls * 2 * math.prod(kernel) * channels * channels * math.prod(shape)
