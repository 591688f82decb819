"""
Title: PyTorch reference timing of the same FusionNet, for side-by-side runs
Description: Builds FusionNet (Quan et al. 2016) in PyTorch with the layer
layout of ``fusionnet_tf.models.build_fusionnet`` (conv-res-conv blocks,
2x2 max-pool, 2x2 stride-2 transposed convs, long skips by summation, 1x1
output) and times one 512x512 slice, the way a PyTorch user would run it on
a CPU: eval mode, ``torch.inference_mode``, channels-last tensors.

It needs only ``torch`` and ``numpy`` (no TensorFlow), so it can run from its
own virtual environment; ``bench_inference.py --torch-python PY`` starts it
as a subprocess between its own timed runs, so both see the same machine.

Variants (``--variant``):
    eager: the plain ``nn.Module`` (BatchNorm as separate ops);
    fused: BatchNorm folded into the convolutions
        (``torch.nn.utils.fusion.fuse_conv_bn_eval``), the fastest eager form;
    bf16: ``fused`` under ``torch.autocast("cpu", torch.bfloat16)``.

Run: ``python benchmarks/torch_reference.py --base-filters 64 --repeats 3 --threads 2``.
The last line printed is one JSON object with ``seconds_per_slice`` (median of
``--repeats`` after ``--warmup`` calls), every timing, the foreign CPU load
and the torch version. Until 2026-12-02 it timed one call after one warm-up
with torch's default inter-op pool; that single call ran 5.4 s (eager) where
the independent peer (``../shared/peers/torch_fusionnet.py``, median of 4
after 2 warm-ups) ran 3.4-3.9 s in the same hour; timed the peer's way, the
eager and fused variants ran like the peer (BENCHMARKS.md, 2026-12-02): on a
shared 2-core machine one call is mostly noise. ``bench_inference.py`` now
times the peer itself for float32 and this script for bf16 autocast (the
peer has no bf16 mode).

Training (``--mode train``, used by ``bench_train.py``): the plain module in
train mode, Adam, binary cross-entropy on the float32 probabilities, one
``--side`` tile per step; ``--variant eager`` trains in float32, ``bf16``
runs the forward pass under ``torch.autocast("cpu", torch.bfloat16)`` (no BN
folding in training). It prints ``tiles_per_s`` (median of ``--repeats``
timed steps after ``--warmup`` steps) and the foreign CPU load of the timed
window. Example:
``python benchmarks/torch_reference.py --mode train --variant bf16 --base-filters 16 --repeats 8``.
"""

import argparse
import json
import time

from hostinfo import foreign_cpu_meter  # benchmarks/hostinfo.py: standard library only


def build_torch_fusionnet(base_filters=64, depth=4, residual_convs=3):
    """FusionNet as a ``torch.nn.Module``: (B, 1, H, W) float32 -> (B, 1, H, W) probabilities."""
    import torch
    from torch import nn

    def conv_bn_relu(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class ConvResConv(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv_in = conv_bn_relu(cin, cout)
            self.res = nn.Sequential(*[conv_bn_relu(cout, cout) for _ in range(residual_convs)])
            self.conv_out = conv_bn_relu(cout, cout)

        def forward(self, x):
            x = self.conv_in(x)
            return self.conv_out(x + self.res(x))

    class FusionNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [base_filters * 2**level for level in range(depth)]
            self.encoders = nn.ModuleList()
            cin = 1
            for width in widths:
                self.encoders.append(ConvResConv(cin, width))
                cin = width
            self.pool = nn.MaxPool2d(2)
            self.bridge = ConvResConv(cin, base_filters * 2**depth)
            cin = base_filters * 2**depth
            self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
            for width in reversed(widths):
                self.ups.append(nn.Sequential(nn.ConvTranspose2d(cin, width, 2, stride=2, bias=False),
                                              nn.BatchNorm2d(width), nn.ReLU(inplace=True)))
                self.decoders.append(ConvResConv(width, width))
                cin = width
            self.head = nn.Conv2d(cin, 1, 1)

        def forward(self, x):
            skips = []
            for encoder in self.encoders:
                x = encoder(x)
                skips.append(x)
                x = self.pool(x)
            x = self.bridge(x)
            for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
                x = decoder(up(x) + skip)
            return torch.sigmoid(self.head(x))

    return FusionNet()


def fuse_batchnorm(module):
    """Fold every Conv/ConvTranspose + BatchNorm2d pair of ``nn.Sequential`` blocks (eval mode)."""
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.modules():
        if not isinstance(child, nn.Sequential):
            continue
        layers = list(child)
        for i in range(len(layers) - 1):
            conv, bn = layers[i], layers[i + 1]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d):
                child[i] = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
                child[i + 1] = torch.nn.Identity()
    return module


def train_main(args):
    """``--mode train``: time training steps (float32, or bf16 autocast) and print one JSON line."""
    import statistics

    import torch
    from torch import nn

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_torch_fusionnet(args.base_filters).train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCELoss()
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(args.batch, 1, args.side, args.side, generator=generator)
    image = image.contiguous(memory_format=torch.channels_last)
    target = (torch.rand(args.batch, 1, args.side, args.side, generator=generator) < 0.22).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=args.variant == "bf16"):
            probabilities = model(image)
        loss = loss_fn(probabilities.float(), target)  # BCE is not autocast-safe
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    foreign = foreign_cpu_meter()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    print(json.dumps({"mode": "train", "variant": args.variant,
                      "tiles_per_s": round(args.batch / step_s, 3),
                      "sec_per_step": round(step_s, 4), "sec_per_step_min": round(min(times), 4),
                      "foreign_cpu": foreign(), "base_filters": args.base_filters,
                      "side": args.side, "batch": args.batch, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-filters", type=int, default=64, help="filters of level 1 (default: 64)")
    parser.add_argument("--side", type=int, default=512, help="slice side in pixels (default: 512)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed calls after --warmup ones; their median is reported (default: 1)")
    parser.add_argument("--variant", choices=("eager", "fused", "bf16"), default="eager",
                        help="eager (default), fused (BN folded) or bf16 (fused + autocast)")
    parser.add_argument("--mode", choices=("infer", "train"), default="infer",
                        help="infer (default) or train (variants eager = float32, bf16 = autocast)")
    parser.add_argument("--batch", type=int, default=1, help="train: tiles per step (default: 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps/calls (default: 2)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads, 0 = torch default (default: 0)")
    args = parser.parse_args()
    if args.mode == "train":
        if args.variant == "fused":
            parser.error("--variant fused folds BN for inference; train with eager or bf16")
        return train_main(args)

    return infer_main(args)


def infer_main(args):
    """``--mode infer``: time whole-slice forward passes and print one JSON line.

    Set up as a PyTorch user would for CPU speed: eval mode,
    ``torch.inference_mode``, channels-last tensors, ``--threads`` intra-op
    threads (0: torch's default) and one inter-op thread, ``--warmup`` untimed
    calls (oneDNN primitive creation), then the median of ``--repeats``.
    """
    import statistics

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    model = build_torch_fusionnet(args.base_filters).eval()
    if args.variant != "eager":
        model = fuse_batchnorm(model)
    model = model.to(memory_format=torch.channels_last)
    image = torch.from_numpy(np.random.default_rng(0).random((1, 1, args.side, args.side), np.float32))
    image = image.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16,
                                                    enabled=args.variant == "bf16"):
            return model(image).float().numpy()

    for _ in range(max(1, args.warmup)):
        run()
    foreign = foreign_cpu_meter()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(json.dumps({"seconds_per_slice": round(seconds, 4), "seconds_min": round(min(times), 4),
                      "times": [round(t, 4) for t in times], "tiles_per_s": round(1 / seconds, 4),
                      "foreign_cpu": foreign(), "variant": args.variant, "mode": "infer",
                      "base_filters": args.base_filters, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
