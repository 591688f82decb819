"""Search ``AffinityParams`` for the lowest 3D adapted Rand error on labelled volumes.

The same adaptive grid search as ``fusionnet_tf.segmentation.tune`` (its
random phase and best-first walk are reused), over ``AFFINITY_SEARCH_SPACE``
or ``MWS_SEARCH_SPACE``, scored with the whole-volume scores of
``fusionnet_tf.metrics`` (ground-truth id 0 not counted). Rows carry
``v_rand = 1 - adapted Rand error`` and ``v_info`` of the 3D contingency
table, so ``tune.format_rows`` prints them.
"""

import time

import numpy as np

from fusionnet_tf.checks import check_int
from fusionnet_tf.segmentation.affinity_params import AffinityParams
from fusionnet_tf.segmentation.tune import best_setting, setting_key, grid_neighbours, random_points

AFFINITY_SEARCH_SPACE = {
    "boundary": ("mean", "min"),
    "sigma": (0.0, 1.0, 2.0),
    "seed_method": ("distance", "minima"),
    "seed_threshold": (0.2, 0.3, 0.5, 0.7),
    "seed_distance": (1.0, 2.0, 4.0, 8.0),
    "merge_statistic": ("mean", "quantile"),
    "merge_quantile": (0.25, 0.5, 0.75),
    "merge_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "min_size": (0, 50, 200, 1000),
}

MWS_SEARCH_SPACE = {
    "mws_bias": (0.3, 0.4, 0.5, 0.6, 0.7),
    "mws_long_range_bias": (0.3, 0.5, 0.7, 0.8, 0.9),
    "mws_stride": (1, 2, 4),
    "min_size": (0, 50, 200, 1000),
}

_MWS_ONLY = ("mws_bias", "mws_long_range_bias", "mws_stride")


def score_volume(labels, segments):
    """``(v_rand, v_info, adapted_rand_error)`` of a 3D segmentation (one table)."""
    from fusionnet_tf.metrics import scores_report_from_counts, segmentation_counts

    counts = segmentation_counts(labels, segments, ground_truth="segments", mode="3d")
    scores = scores_report_from_counts(*counts)
    return scores["v_rand"], scores["v_info"], scores["adapted_rand_error"]


def _canonical(point, start):
    """``point`` with the parameters its method and choices ignore reset to ``start``'s."""
    point = dict(point)
    if point["method"] == "mws":
        unused = [key for key in AFFINITY_SEARCH_SPACE if key != "min_size"]
    else:
        unused = list(_MWS_ONLY)
        if point["seed_method"] == "minima":
            unused.append("seed_distance")
        if point["merge_statistic"] == "mean":
            unused.append("merge_quantile")
    for key in unused:
        point[key] = start[key]
    return point


def tune_affinities(affs, offsets, labels, budget=40, start=None, space=None, seed=0,
                    callback=None):
    """Adaptive grid search for the ``AffinityParams`` with the best 3D score.

    Args:
        affs: (C, Z, Y, X) float32 affinities in [0, 1].
        offsets: the C offsets.
        labels: (Z, Y, X) ground-truth ids (0 = not counted).
        budget: int >= 1, the number of settings to score.
        start: ``AffinityParams`` to start from (its ``method`` is kept); None
            for the defaults.
        space: dict parameter -> values; None for the method's space.
        seed: int, seed of the random phase.
        callback: optional function called with each new row.

    Returns:
        ``(best, rows)``: the best ``AffinityParams`` and one dict per scored
        setting (``params``, ``v_rand``, ``v_info``, ``adapted_rand_error``,
        ``seconds``).
    """
    from fusionnet_tf.data.affinity_io import check_affinities
    from fusionnet_tf.segmentation.affinities import segment_affinities

    check_int("budget", budget)
    affs, offsets = check_affinities(affs, offsets)
    labels = np.asarray(labels)
    if labels.shape != affs.shape[1:]:
        raise ValueError(f"labels have shape {labels.shape} but the affinities cover "
                         f"{affs.shape[1:]}")
    start = (start or AffinityParams()).to_dict()
    default_space = MWS_SEARCH_SPACE if start["method"] == "mws" else AFFINITY_SEARCH_SPACE
    space = dict(space or default_space)
    unknown = sorted(set(space) - set(start))
    if unknown:
        raise ValueError(f"unknown parameters in the search space: {unknown}")
    rows, seen = [], {}

    def evaluate(point):
        params = AffinityParams(**_canonical(point, start))
        key = setting_key(params.to_dict())
        if key in seen or len(rows) >= budget:
            return
        began = time.perf_counter()
        segments, _ = segment_affinities(affs, offsets, params)
        v_rand, v_info, error = score_volume(labels, segments)
        row = {"params": params.to_dict(), "v_rand": v_rand, "v_info": v_info,
               "adapted_rand_error": error, "seconds": time.perf_counter() - began}
        seen[key] = row
        rows.append(row)
        if callback:
            callback(row)

    evaluate(start)
    rng = np.random.default_rng(seed)
    for point in random_points(space, max(0, budget // 3 - 1), rng):
        evaluate(dict(start, **point))
    expanded = set()
    while len(rows) < budget:
        candidates = [row for row in rows if setting_key(row["params"]) not in expanded]
        if not candidates:
            break
        best = best_setting(candidates)
        expanded.add(setting_key(best["params"]))
        for point in grid_neighbours({key: best["params"][key] for key in space}, space):
            evaluate(dict(best["params"], **point))
    return AffinityParams(**best_setting(rows)["params"]), rows
