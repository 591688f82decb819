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

``cross_validate(membrane, labels, folds)`` is the honest version
(``fusionnet tune-segment --cv K``): the same search runs on K-1 contiguous
folds of slices and its winner is scored on the held-out fold; the settings
are ranked by their worst fold (``CV_RULE``), which prefers a flat optimum to
one that wins on most slices and fails on a few.
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


def random_points(space, count, rng):
    keys = list(space)
    for _ in range(count):
        yield {key: space[key][rng.integers(len(space[key]))] for key in keys}


def grid_neighbours(point, space):
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
    membrane = check_membrane(membrane)

    def score(params):
        segments, _ = segment(membrane, params, mode=mode)
        v_rand, v_info = score_segmentation(labels, segments)
        return {"v_rand": v_rand, "v_info": v_info}

    rows = search(score, budget=budget, start=start, space=space, seed=seed, callback=callback)
    return SegmentParams(**best_setting(rows)["params"]), rows


def search(score, budget=60, start=None, space=None, seed=0, callback=None):
    """The adaptive grid search behind ``tune`` and ``cross_validate``, for any objective.

    Args:
        score: function ``SegmentParams -> dict`` with at least ``v_rand`` and
            ``v_info``; an optional ``objective`` (a tuple, higher = better)
            ranks the settings instead of ``(v_rand, v_info)``.
        budget, start, space, seed, callback: as in ``tune``.

    Returns:
        list of row dicts (``params`` plus ``score``'s keys and ``seconds``),
        in the order they were tried.
    """
    check_int("budget", budget)
    space = dict(space or SEARCH_SPACE)
    unknown = sorted(set(space) - set(SegmentParams().to_dict()))
    if unknown:
        raise ValueError(f"unknown parameters in the search space: {unknown}")
    start = (start or SegmentParams()).to_dict()
    rows, seen = [], {}

    def evaluate(point):
        params = SegmentParams(**_canonical(point, start))
        key = setting_key(params.to_dict())
        if key in seen or len(rows) >= budget:
            return seen.get(key)
        began = time.perf_counter()
        row = dict(score(params), params=params.to_dict(),
                   seconds=time.perf_counter() - began)
        seen[key] = row
        rows.append(row)
        if callback:
            callback(row)
        return row

    evaluate(start)
    rng = np.random.default_rng(seed)
    for point in random_points(space, max(0, budget // 3 - 1), rng):
        evaluate(dict(start, **point))
    expanded = set()
    while len(rows) < budget:  # best-first: expand the best setting not expanded yet
        candidates = [row for row in rows if setting_key(row["params"]) not in expanded]
        if not candidates:
            break
        best = best_setting(candidates)
        expanded.add(setting_key(best["params"]))
        for point in grid_neighbours(best["params"], space):
            evaluate(point)
    return rows


# ---------------------------------------------------------------- cross-validation

CV_RULE = "worst_fold"
CV_RULE_TEXT = ("a setting's score is its worst fold's V_rand (ties: its mean fold V_rand, "
                "then pooled V_info)")


def make_folds(num_slices, folds):
    """Split slice indices ``0..num_slices-1`` into ``folds`` contiguous folds.

    Args:
        num_slices: int >= 1.
        folds: int >= 2, at most ``num_slices``.

    Returns:
        list of ``folds`` lists of int (sizes differ by at most one; the first
        ones are the larger).

    Raises:
        ValueError: ``folds`` < 2 or more folds than slices.

    Example:
    >>> make_folds(5, 2)
    [[0, 1, 2], [3, 4]]
    """
    check_int("folds", folds, minimum=2)
    if folds > num_slices:
        raise ValueError(f"cannot make {folds} folds of {num_slices} slices: more folds "
                         f"than slices")
    return [part.tolist() for part in np.array_split(np.arange(num_slices), folds)]


class FoldScorer:
    """Segments and scores one setting fold by fold, each (setting, fold) once.

    The contingency counts of each (setting, fold) are kept, so the score of a
    setting on any union of folds is the pooled score of its folds' counts
    (the same figure as segmenting and scoring those slices together:
    ``segmentation_counts`` pools per-slice tables). In ``"3d"`` mode each
    fold's slices are segmented as one block.

    Args:
        membrane: (N, H, W) float32 membrane probability in [0, 1].
        labels: (N, H, W) binary ground truth, 1 = membrane.
        folds: list of lists of slice indices (``make_folds``).
        mode: ``"2d"`` or ``"3d"``.
    """

    def __init__(self, membrane, labels, folds, mode="2d"):
        self.membrane = check_membrane(membrane)
        self.labels = np.asarray(labels)
        self.folds = [list(fold) for fold in folds]
        self.mode = mode
        self.segmentations = 0
        self._counts = {}

    def counts(self, params, fold):
        """Contingency counts ``(joint, gt_sizes, proposal_sizes)`` of ``params`` on fold ``fold``."""
        from fusionnet_tf.metrics import segmentation_counts

        key = (setting_key(params.to_dict()), fold)
        if key not in self._counts:
            index = self.folds[fold]
            segments, _ = segment(self.membrane[index], params, mode=self.mode)
            self._counts[key] = segmentation_counts(self.labels[index], segments)
            self.segmentations += 1
        return self._counts[key]

    def score(self, params, folds):
        """V_rand / V_info of ``params`` pooled over ``folds`` and fold by fold, with its objective.

        Returns:
            dict: ``v_rand``, ``v_info`` (pooled over ``folds``),
            ``fold_v_rand`` (list, in the order of ``folds``), and
            ``objective``: ``(worst fold V_rand, mean fold V_rand, pooled
            V_info)``, higher = better (``CV_RULE``).
        """
        from fusionnet_tf.metrics import scores_from_counts

        parts = [self.counts(params, fold) for fold in folds]
        fold_v_rand = [scores_from_counts(*part)[0] for part in parts]
        v_rand, v_info = scores_from_counts(*(np.concatenate(arrays) for arrays in zip(*parts)))
        return {"v_rand": v_rand, "v_info": v_info, "fold_v_rand": fold_v_rand,
                "objective": (min(fold_v_rand), float(np.mean(fold_v_rand)), v_info)}


def cross_validate(membrane, labels, folds=5, budget=60, mode="2d", start=None, space=None,
                   seed=0, callback=None):
    """Cross-validated tuning: held-out scores per fold, and the setting that holds up best.

    The slices are split into ``folds`` contiguous folds (``make_folds``).

    1. Held-out estimate (nested): for each fold k, the adaptive search
       (``search``, ``budget`` settings) runs on the other folds, ranking
       settings by ``CV_RULE`` over those folds; its winner is then scored
       on fold k, which it never saw. The pooled held-out score pools the
       counts of each fold scored with its own winner: what a user should
       expect from this procedure on new slices.
    2. Choice: every setting any of the K searches tried is scored on every
       fold, and the one with the best worst-fold V_rand is returned
       (``CV_RULE``). A setting that wins on most slices but fails badly on
       one fold (a sharp optimum, a lucky merge) loses to one that is good
       everywhere: with five slices per fold, one merge of two large cells
       moves V_rand by 0.005, and the best setting of one data set often
       does worse than a conservative one on the next.

    Args:
        membrane: (N, H, W) float32 membrane probability in [0, 1].
        labels: (N, H, W) binary ground truth, 1 = membrane.
        folds: int in [2, N].
        budget, mode, start, space, seed: as in ``tune`` (``budget`` per fold).
        callback: optional function called with each new search row.

    Returns:
        ``(best, report)``: ``SegmentParams`` and a JSON-able dict with
        ``folds`` (per fold: ``fold``, ``slices``, held-out ``v_rand`` /
        ``v_info``, ``train_v_rand`` on the other folds and the fold's
        ``params``), ``pooled_held_out`` (``v_rand``, ``v_info``),
        ``chosen`` (``fold_v_rand`` of the returned setting on every fold,
        ``worst_fold_v_rand``, ``mean_fold_v_rand``), ``rule``,
        ``settings_tried`` and ``segmentations``.

    Raises:
        ValueError: ``folds`` out of range, bad inputs (as ``tune``).
    """
    membrane = check_membrane(membrane)
    if np.shape(labels) != membrane.shape:
        raise ValueError(f"labels have shape {np.shape(labels)} but the membrane map has "
                         f"{membrane.shape}")
    parts = make_folds(len(membrane), folds)
    scorer = FoldScorer(membrane, labels, parts, mode=mode)
    every = list(range(len(parts)))
    held_out, winners, candidates = [], [], {}
    for fold in every:
        train = [other for other in every if other != fold]
        rows = search(lambda params, train=train: scorer.score(params, train), budget=budget,
                      start=start, space=space, seed=seed, callback=callback)
        for row in rows:
            candidates.setdefault(setting_key(row["params"]), row["params"])
        winner = best_setting(rows)
        params = SegmentParams(**winner["params"])
        outside = scorer.score(params, [fold])
        winners.append(params)
        held_out.append({"fold": fold, "slices": parts[fold], "v_rand": outside["v_rand"],
                         "v_info": outside["v_info"], "train_v_rand": winner["v_rand"],
                         "params": params.to_dict()})
    pooled = [scorer.counts(params, fold) for fold, params in zip(every, winners)]
    from fusionnet_tf.metrics import scores_from_counts

    v_rand, v_info = scores_from_counts(*(np.concatenate(arrays) for arrays in zip(*pooled)))
    ranked = [(scorer.score(SegmentParams(**values), every), values)
              for values in candidates.values()]
    chosen_scores, chosen = max(ranked, key=lambda pair: pair[0]["objective"])
    report = {
        "folds": held_out,
        "pooled_held_out": {"v_rand": v_rand, "v_info": v_info},
        "chosen": {"fold_v_rand": chosen_scores["fold_v_rand"],
                   "worst_fold_v_rand": chosen_scores["objective"][0],
                   "mean_fold_v_rand": chosen_scores["objective"][1]},
        "rule": CV_RULE,
        "settings_tried": len(candidates),
        "segmentations": scorer.segmentations,
    }
    return SegmentParams(**chosen), report


def format_cv_report(report):
    """Lines for each fold's held-out score, the pooled held-out score and the choice."""
    lines = [f"{'fold':>4}  {'slices':>9}  {'held-out V_rand':>15}  {'V_info':>7}  "
             f"{'V_rand on the other folds':>25}"]
    for row in report["folds"]:
        span = f"{row['slices'][0]}-{row['slices'][-1]}"
        lines.append(f"{row['fold']:>4}  {span:>9}  {row['v_rand']:>15.4f}  "
                     f"{row['v_info']:>7.4f}  {row['train_v_rand']:>25.4f}")
    pooled = report["pooled_held_out"]
    lines.append(f"pooled held-out: V_rand {pooled['v_rand']:.4f}, V_info {pooled['v_info']:.4f}")
    chosen = report["chosen"]
    lines.append(f"chosen setting ({CV_RULE_TEXT}): worst fold V_rand "
                 f"{chosen['worst_fold_v_rand']:.4f}, mean {chosen['mean_fold_v_rand']:.4f} "
                 f"({report['settings_tried']} settings tried)")
    return "\n".join(lines)


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


def setting_key(values):
    return tuple(sorted(values.items()))


def best_setting(rows):
    return max(rows, key=lambda row: row.get("objective", (row["v_rand"], row["v_info"])))


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
