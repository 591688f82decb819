"""
Title: What inference precision costs in accuracy and buys in speed, on ISBI 2012
Description: Predicts the held-out ISBI 2012 training slices 20-24 with a
model (default: the shipped reference FusionNet) in each inference precision
(``Predictor(precision=...)``: float32, mixed_bfloat16, mixed_float16) and
reports, per precision, the ISBI scores (``fusionnet_tf.metrics.isbi_scores``:
V_rand, V_info, pixel error), the deviation of the probability maps from
float32 (mean and max absolute difference, share of pixels whose 0.5
threshold flips) and seconds per slice (after one warm-up slice).

Run: ``python benchmarks/bench_precision.py --data ../shared/data/isbi2012 [--tta 8]``.
The last line printed is one JSON object keyed by precision.
"""

import argparse
import json
import os
import time
from datetime import datetime, timezone

from fusionnet_tf.inference.optimize import INFERENCE_PRECISIONS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA = os.environ.get("ISBI2012_DIR", "../shared/data/isbi2012")
PRECISIONS = INFERENCE_PRECISIONS  # float32, mixed_float16, mixed_bfloat16


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"ISBI 2012 folder (default: $ISBI2012_DIR or {DEFAULT_DATA})")
    parser.add_argument("--model", default=None,
                        help="A .keras file (default: the shipped pretrained model).")
    parser.add_argument("--tta", type=int, choices=(1, 4, 8), default=8,
                        help="Test-time augmentation (default: 8, as fusionnet predict).")
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help=f"Comma-separated precisions to compare (default: {','.join(PRECISIONS)}).")
    return parser.parse_args()


def main():
    args = parse_args()
    import numpy as np

    from fusionnet_tf.data import get_isbi2012_paths, normalize, read_labels, read_stack
    from fusionnet_tf.inference import Predictor, load_model
    from fusionnet_tf.metrics import isbi_scores
    from fusionnet_tf.pretrained import load_pretrained

    paths = get_isbi2012_paths(args.data)
    images = normalize(read_stack(paths["train_images"])[20:25], mode="slice")
    labels = read_labels(paths["train_labels"])[20:25]
    model = load_model(args.model) if args.model else load_pretrained()

    results, reference = {}, None
    for precision in args.precisions.split(","):
        predictor = Predictor(model, tile_shape=512, tta=args.tta, batch_size=4, precision=precision)
        predictor.predict(images[:1])  # trace
        start = time.perf_counter()
        membrane = predictor.predict(images)
        seconds = (time.perf_counter() - start) / len(images)
        reference = membrane if reference is None else reference
        difference = np.abs(membrane - reference)
        scores = isbi_scores(membrane, labels)
        results[precision] = {
            "v_rand": round(scores["v_rand"], 5), "v_info": round(scores["v_info"], 5),
            "pixel_error": round(scores["pixel_error"], 5),
            "mean_abs_diff_vs_first": float(f"{difference.mean():.3g}"),
            "max_abs_diff_vs_first": float(f"{difference.max():.3g}"),
            "threshold_flips_vs_first": float(f"{np.mean((membrane > 0.5) != (reference > 0.5)):.3g}"),
            "seconds_per_slice": round(seconds, 3),
        }
        print(precision, results[precision], flush=True)
    results.update(tta=args.tta, model=args.model or "pretrained", slices="20-24",
                   date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
