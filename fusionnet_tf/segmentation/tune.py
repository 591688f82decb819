"""Search the post-processing parameters for the best V_rand on labelled slices.

``tune(membrane, labels, budget)`` is a small adaptive search over a grid of
values per parameter (``SEARCH_SPACE``): it scores the starting parameters,
then random grid points (a third of the budget), then a best-first walk: the
best setting not yet expanded is expanded by scoring every setting that
differs from it in one parameter (any other grid value), until the budget is
spent. When the best setting's neighbours bring nothing better, the walk
continues from the next best one, so a local optimum does not end the search. Every setting is scored with the
ISBI 2012 V_rand of the label image (V_info breaks ties), so the search needs
no dependency beyond NumPy. Results are deterministic for a given ``seed``.
"""

import itertools
import time

import numpy as np

from fusionnet_tf.checks import check_int
from fusionnet_tf.segmentation.params import SegmentParams
from fusionnet_tf.segmentation.segmenter import check_membrane, segment

# parameter -> candidate values (coordinate descent tries each in turn)
SEARCH_SPACE = {
    "sigma": (0.0, 0.5, 1.0, 2.0),
    "seed_method": ("threshold", "distance"),
    "seed_threshold": (0.02, 0.05, 0.1, 0.2, 0.3, 0.5),
    "seed_distance": (4.0, 8.0, 16.0),
    "min_seed_size": (0, 10, 50),
    "merge_statistic": ("mean", "quantile"),
    "merge_quantile": (0.25, 0.5, 0.75),
    "merge_threshold": (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8),
    "min_size": (0, 25, 100, 400),
}


def score_segmentation(labels, segments):
    """ISBI V_rand / V_info of a label image (see ``fusionnet_tf.metrics``)."""
    from fusionnet_tf.metrics import segmentation_scores_report

    scores = segmentation_scores_report(labels, segments)
    return scores["v_rand"], scores["v_info"]


def _random_points(space, count, rng):
    keys = list(space)
    for _ in range(count):
        yield {key: space[key][rng.integers(len(space[key]))] for key in keys}


def _neighbours(point, space):
    """Points that differ from ``point`` in exactly one parameter (any other grid value)."""
    for key, values in space.items():
        for value in values:
            if value != point[key]:
                yield dict(point, **{key: value})


def tune(membrane, labels, budget=60, mode="2d", start=None, space=None, seed=0,
         callback=None):
    """Adaptive grid search for the parameters with the best V_rand.

    Args:
        membrane: (N, H, W) float32 membrane probability in [0, 1].
        labels: (N, H, W) binary ground truth, 1 = membrane.
        budget: int >= 1, the number of settings to score.
        mode: ``"2d"`` or ``"3d"`` (passed to ``segment``).
        start: ``SegmentParams`` to start from (always scored first); None
            for the defaults.
        space: dict parameter -> tuple of values; None for ``SEARCH_SPACE``.
        seed: int, seed of the random phase.
        callback: optional function called with each new result row.

    Returns:
        ``(best, rows)``: the best ``SegmentParams`` and one dict per scored
        setting (``params``, ``v_rand``, ``v_info``, ``seconds``), in the
        order they were tried.

    Raises:
        ValueError: ``budget`` < 1, unknown parameters in ``space``, or bad
            inputs.
    """
    check_int("budget", budget)
    membrane = check_membrane(membrane)
    space = dict(space or SEARCH_SPACE)
    unknown = sorted(set(space) - set(SegmentParams().to_dict()))
    if unknown:
        raise ValueError(f"unknown parameters in the search space: {unknown}")
    start = (start or SegmentParams()).to_dict()
    rows, seen = [], {}

    def evaluate(point):
        params = SegmentParams(**_canonical(point, start))
        key = _key(params.to_dict())
        if key in seen or len(rows) >= budget:
            return seen.get(key)
        began = time.perf_counter()
        segments, _ = segment(membrane, params, mode=mode)
        v_rand, v_info = score_segmentation(labels, segments)
        row = {"params": params.to_dict(), "v_rand": v_rand, "v_info": v_info,
               "seconds": time.perf_counter() - began}
        seen[key] = row
        rows.append(row)
        if callback:
            callback(row)
        return row

    evaluate(start)
    rng = np.random.default_rng(seed)
    for point in _random_points(space, max(0, budget // 3 - 1), rng):
        evaluate(dict(start, **point))
    expanded = set()
    while len(rows) < budget:  # best-first: expand the best setting not expanded yet
        candidates = [row for row in rows if _key(row["params"]) not in expanded]
        if not candidates:
            break
        best = _best(candidates)
        expanded.add(_key(best["params"]))
        for point in _neighbours(best["params"], space):
            evaluate(point)
    return SegmentParams(**_best(rows)["params"]), rows


def _canonical(point, start):
    """``point`` with the parameters its other choices ignore reset to ``start``'s.

    Settings that differ only in an unused parameter (``seed_distance`` with
    threshold seeds, ``min_seed_size`` with distance seeds, ``merge_quantile``
    with the mean) are the same setting and are scored once.
    """
    point = dict(point)
    unused = ["min_seed_size" if point["seed_method"] == "distance" else "seed_distance"]
    if point["merge_statistic"] == "mean":
        unused.append("merge_quantile")
    for key in unused:
        point[key] = start[key]
    return point


def _key(values):
    return tuple(sorted(values.items()))


def _best(rows):
    return max(rows, key=lambda row: (row["v_rand"], row["v_info"]))


def format_rows(rows, limit=15):
    """A table of the ``limit`` best rows (and how many were tried), best first."""
    ranked = sorted(rows, key=lambda row: (-row["v_rand"], -row["v_info"]))[:limit]
    changed = sorted({key for row in rows for key, value in row["params"].items()
                      if value != rows[0]["params"][key]})
    header = ["rank", "V_rand", "V_info", "s"] + changed
    lines = ["  ".join(f"{name:>10}" for name in header)]
    for rank, row in zip(itertools.count(1), ranked):
        cells = [rank, f"{row['v_rand']:.4f}", f"{row['v_info']:.4f}", f"{row['seconds']:.1f}"]
        cells += [row["params"][key] for key in changed]
        lines.append("  ".join(f"{str(cell):>10}" for cell in cells))
    lines.append(f"{len(rows)} settings tried; the first row of the search was "
                 f"V_rand {rows[0]['v_rand']:.4f}")
    return "\n".join(lines)
