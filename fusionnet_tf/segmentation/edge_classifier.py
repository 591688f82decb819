"""Learned edge classifier: agglomeration that learns when to merge (2D slices).

The recipe (``segmenter.segment``) merges watershed fragments while one
statistic of the boundary's membrane probability stays below a hand-set
threshold, which does not transfer between data sets and models. Here the
decision is learned from labelled slices, as learned-agglomeration and
multicut pipelines do (gala: Nunez-Iglesias et al. 2013,
https://doi.org/10.1371/journal.pone.0071715; Beier et al. 2017,
https://doi.org/10.1038/nmeth.4151):

1. **fragments**: the recipe's seeded watershed (``seeded_watershed`` with
   the ``SegmentParams`` stored in the classifier), unchanged;
2. **features**: per edge of the region adjacency graph, statistics of the
   boundary's membrane probability, its length and the two regions' sizes
   and mean probabilities (``edge_features.FEATURE_NAMES``);
3. **classifier**: a scikit-learn random forest (fixed ``random_state``)
   predicts p(merge) per edge. It is trained on the edges of the initial
   graph *and* on the edges met while an oracle agglomerates the training
   slices with the ground truth (gala's training on every level of the
   hierarchy), so it has seen large merged regions too, not only fragments;
4. **agglomeration**: the most confident pair is merged, the merged region's
   edges to its neighbours get new features (boundaries folded together,
   sizes added) and new predictions, until the best p(merge) is below
   ``threshold`` (0.5); then segments smaller than ``min_size`` join their
   weakest-boundary neighbour, exactly as in the recipe.

The trained forest is stored as plain arrays (``pack_forest``) and evaluated
with NumPy (``predict_packed``): one vectorised call per merge costs well
under a millisecond, where scikit-learn's ``predict_proba`` costs 10-30 ms
per call, and a classifier file is an ``.npz`` that loads without pickle
(``EdgeClassifier.save`` / ``load_edge_classifier``). scikit-learn is needed
for training only.
"""

import heapq
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

from fusionnet_tf.checks import check_int, check_range
from fusionnet_tf.segmentation.agglomeration import agglomerate, follow_parents
from fusionnet_tf.segmentation.edge_features import (DROPPED, FEATURE_NAMES, MERGE,
                                                     edge_boundaries, edge_labels,
                                                     fragment_majority, ground_truth_ids,
                                                     region_edge_features, region_statistics)
from fusionnet_tf.segmentation.params import SegmentParams
from fusionnet_tf.segmentation.segmenter import check_membrane, segment
from fusionnet_tf.segmentation.watershed import seeded_watershed

FORMAT = "fusionnet-edge-classifier"
FORMAT_VERSION = 1
SUFFIX = ".npz"
MERGE_PROBABILITY = 0.5
TREES = 100
# random forest settings: depth-bounded trees (packing and prediction cost grow with depth)
FOREST_OPTIONS = {"min_samples_leaf": 4, "max_depth": 16}
PACKED_ARRAYS = ("feature", "threshold", "left", "right", "leaf_p", "roots")


# === The packed forest ===

def pack_forest(forest):
    """The trees of a fitted scikit-learn ``RandomForestClassifier`` as flat arrays.

    Args:
        forest: fitted ``RandomForestClassifier`` whose classes include
            ``MERGE`` (1).

    Returns:
        dict of arrays over all trees' nodes, concatenated: ``feature``
        (int32), ``threshold`` (float64; a sample goes left when its feature,
        as float32, is ``<= threshold``), ``left``, ``right`` (int64 node
        indices; a leaf points to itself, with threshold +inf),
        ``leaf_p`` (float64, the tree's p(merge) at each node), ``roots``
        (int64, one per tree), and ``depth`` (int, the deepest leaf's depth).
    """
    column = list(forest.classes_).index(MERGE)
    parts, offset, depth = [], 0, 0
    for estimator in forest.estimators_:
        tree = estimator.tree_
        left = tree.children_left.astype(np.int64)
        leaf = left < 0
        own = np.arange(tree.node_count, dtype=np.int64)
        value = tree.value[:, 0, :]
        parts.append({
            "feature": np.where(leaf, 0, tree.feature).astype(np.int32),
            "threshold": np.where(leaf, np.inf, tree.threshold).astype(np.float64),
            "left": np.where(leaf, own, left) + offset,
            "right": np.where(leaf, own, tree.children_right.astype(np.int64)) + offset,
            "leaf_p": (value[:, column] / value.sum(axis=1)).astype(np.float64),
            "roots": np.array([offset], np.int64),
        })
        offset += tree.node_count
        depth = max(depth, int(tree.max_depth))
    packed = {key: np.concatenate([part[key] for part in parts]) for key in PACKED_ARRAYS}
    packed["depth"] = depth
    return packed


def predict_packed(packed, features):
    """p(merge) of each row: the mean over trees of the leaf each row reaches.

    Equal to the forest's ``predict_proba(features)[:, MERGE]`` (up to float
    rounding of the mean).

    Args:
        packed: dict from ``pack_forest``.
        features: float (E, F) rows.

    Returns:
        float64 (E,) in [0, 1].
    """
    rows = np.asarray(features, np.float32).astype(np.float64)  # scikit-learn compares float32
    if len(rows) == 0:
        return np.zeros(0)
    nodes = np.broadcast_to(packed["roots"], (len(rows), packed["roots"].size)).copy()
    index = np.arange(len(rows))[:, None]
    feature, threshold = packed["feature"], packed["threshold"]
    left, right = packed["left"], packed["right"]
    for _ in range(packed["depth"]):
        go_left = rows[index, feature[nodes]] <= threshold[nodes]
        nodes = np.where(go_left, left[nodes], right[nodes])
    return packed["leaf_p"][nodes].mean(axis=1)


# === The graph while merging ===

class _EdgeGraph:
    """Region adjacency graph that keeps every edge's boundary values through merges.

    ``ends[e]`` are edge ``e``'s current end nodes, ``values[e]`` its sorted
    boundary values and ``stamp[e]`` counts changes of its features (-1 = the
    edge is gone), so heap entries can be checked for staleness.
    """

    def __init__(self, graph, sizes, mass):
        count = len(sizes) - 1
        edges = len(graph["u"])
        self.parent = np.arange(count + 1)
        self.size = sizes.astype(np.int64).copy()
        self.mass = np.asarray(mass, np.float64).copy()
        self.ends = list(zip(graph["u"].tolist(), graph["v"].tolist()))
        self.values = np.split(graph["values"], graph["offsets"][1:-1]) if edges else []
        self.stamp = [0] * edges
        self.adjacent = [dict() for _ in range(count + 1)]
        for edge, (u, v) in enumerate(self.ends):
            self.adjacent[u][v] = edge
            self.adjacent[v][u] = edge

    def features(self, edges):
        """``edge_features`` of ``edges`` (a list of edge indices) as they are now."""
        parts = [self.values[edge] for edge in edges]
        offsets = np.zeros(len(parts) + 1, np.int64)
        np.cumsum([part.size for part in parts], out=offsets[1:])
        ends = np.array([self.ends[edge] for edge in edges], np.int64).reshape(-1, 2)
        values = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return region_edge_features(values, offsets, ends[:, 0], ends[:, 1], self.size, self.mass)

    def merge(self, keep, gone):
        """Merge node ``gone`` into ``keep``; return the edges of ``keep`` (all changed)."""
        for neighbour, edge in self.adjacent[gone].items():
            del self.adjacent[neighbour][gone]
            if neighbour == keep:
                self.stamp[edge] = -1
                continue
            existing = self.adjacent[keep].get(neighbour)
            if existing is None:  # the boundary moves to ``keep`` as it is
                self.adjacent[keep][neighbour] = edge
                self.adjacent[neighbour][keep] = edge
                self.ends[edge] = (keep, neighbour)
                continue
            folded = np.concatenate((self.values[existing], self.values[edge]))
            self.values[existing] = np.sort(folded, kind="stable")
            self.stamp[edge] = -1  # folded into ``existing``
        self.adjacent[gone] = {}
        self.parent[gone] = keep
        self.size[keep] += self.size[gone]
        self.mass[keep] += self.mass[gone]
        changed = list(self.adjacent[keep].values())  # sizes changed: every edge of ``keep``
        for edge in changed:
            self.stamp[edge] += 1
        return changed

    def roots(self):
        """Final id of every original node."""
        return follow_parents(self.parent)


def merge_greedy(state, score, threshold):
    """Merge the best-scoring edge while its score is at least ``threshold``.

    Args:
        state: ``_EdgeGraph``.
        score: function ``list of edge indices -> float array`` (higher =
            merge first), called on all edges once, then on the edges each
            merge changed.
        threshold: float; merging stops when no edge scores this or more.

    Returns:
        int, the number of merges.
    """
    edges = list(range(len(state.ends)))
    scores = score(edges).tolist() if edges else []
    heap = [(-value, edge, 0) for edge, value in zip(edges, scores) if value >= threshold]
    heapq.heapify(heap)
    merges = 0
    while heap:
        _, edge, stamp = heapq.heappop(heap)
        if state.stamp[edge] != stamp:
            continue  # stale: the edge changed or is gone
        u, v = state.ends[edge]
        keep, gone = (u, v) if len(state.adjacent[u]) >= len(state.adjacent[v]) else (v, u)
        changed = state.merge(keep, gone)
        merges += 1
        if changed:
            for edge, value in zip(changed, score(changed).tolist()):
                if value >= threshold:
                    heapq.heappush(heap, (-value, edge, state.stamp[edge]))
    return merges


def build_graph(fragments, count, membrane):
    """``_EdgeGraph`` of a fragment image (boundary values from ``membrane``)."""
    graph = edge_boundaries(fragments, membrane)
    sizes, mass = region_statistics(fragments, membrane, count)
    return _EdgeGraph(graph, sizes, mass)


# === The classifier ===

class EdgeClassifier:
    """A trained edge classifier: p(merge) per edge, and the agglomeration it drives.

    Args:
        packed: dict from ``pack_forest``.
        params: ``SegmentParams`` of the fragments it was trained on (seeds,
            smoothing) and of the small-segment clean-up (``min_size``); the
            recipe's ``merge_*`` fields are not used.
        threshold: float in [0, 1]; merging stops when the best p(merge) is
            below it. Defaults to 0.5.
        info: JSON-able dict recorded in the file (training data, scores).

    Example:
    >>> classifier = train_edge_classifier(membrane, labels)      # (N, H, W) each
    >>> neurons, max_id = classifier.segment(new_membrane)
    >>> classifier.save("edges.npz"); load_edge_classifier("edges.npz")
    """

    def __init__(self, packed, params, threshold=MERGE_PROBABILITY, info=None):
        check_range("threshold", threshold, 0, 1)
        self.packed = packed
        self.params = params
        self.threshold = float(threshold)
        self.info = dict(info or {})

    def with_threshold(self, threshold):
        """A copy that stops merging at ``threshold`` (None: this one)."""
        if threshold is None:
            return self
        return EdgeClassifier(self.packed, self.params, threshold, self.info)

    def predict(self, features):
        """p(merge), float64 (E,), of feature rows float (E, 16) (``FEATURE_NAMES``)."""
        return predict_packed(self.packed, features)

    def agglomerate(self, fragments, count, membrane, smoothed, min_size=0):
        """Merge fragments by the classifier, then absorb segments below ``min_size``.

        Args:
            fragments: (H, W) int labels 1..count covering every pixel.
            count: int, the largest label.
            membrane: (H, W) float32 membrane map (the features' boundary
                values).
            smoothed: (H, W) float32 map the fragments were flooded on (the
                small-segment clean-up's boundary values, as in the recipe).
            min_size: int; segments with fewer pixels join their
                weakest-boundary neighbour afterwards (0 or 1 = none).

        Returns:
            int array (count + 1,): the merged id of each fragment (an old id;
            apply with ``mapping[fragments]``).
        """
        state = build_graph(fragments, count, membrane)
        merge_greedy(state, lambda edges: self.predict(state.features(edges)), self.threshold)
        mapping = state.roots()
        if min_size > 1:
            mapping = agglomerate(mapping[fragments], count, smoothed, 0, min_size)[mapping]
        return mapping

    def segment(self, membrane, keep_boundaries=False, progress=False):
        """``segment(membrane, self.params, classifier=self)``: 2D label images.

        Args:
            membrane: (N, H, W) or (H, W) float membrane probability in [0, 1].
            keep_boundaries, progress: as ``segmenter.segment``.

        Returns:
            ``(labels, max_id)`` as ``segmenter.segment`` (ids unique over
            the stack).
        """
        return segment(membrane, self.params, mode="2d", keep_boundaries=keep_boundaries,
                       progress=progress, classifier=self)

    def header(self):
        """The JSON header of the file: format, version, features, parameters, info."""
        from fusionnet_tf import __version__

        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "feature_names": list(FEATURE_NAMES), "fusionnet_tf": __version__,
                "params": self.params.to_dict(), "threshold": self.threshold,
                "depth": int(self.packed["depth"]), "info": self.info}

    def save(self, path):
        """Write the classifier atomically as an ``.npz`` (JSON header + tree arrays; no pickle).

        Returns:
            Path written.
        """
        from fusionnet_tf.io.outputs import atomic_path

        header = np.frombuffer(json.dumps(self.header()).encode(), np.uint8)
        arrays = {key: self.packed[key] for key in PACKED_ARRAYS}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, header=header, **arrays)
        return Path(path)


def load_edge_classifier(path, option="classifier"):
    """Read a classifier that ``EdgeClassifier.save`` wrote.

    Args:
        path: the ``.npz`` file.
        option: how messages name the file (e.g. ``"--classifier"``).

    Returns:
        ``EdgeClassifier``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file: not a classifier file (any
            other file, a damaged one), a newer format version, or features
            that differ from this version's ``FEATURE_NAMES``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{option} file not found: {path}")
    not_one = (f"{option} {path}: not a fusionnet edge classifier file (expected the .npz "
               f"that 'fusionnet train-edges' writes)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        header = json.loads(bytes(arrays.pop("header")).decode())
    except (OSError, ValueError, KeyError, AttributeError, TypeError, EOFError,
            UnicodeDecodeError, zipfile.BadZipFile) as exc:
        raise ValueError(not_one) from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(not_one)
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{option} {path}: edge classifier format version {version!r} is not "
                         f"one this fusionnet-tf reads (<= {FORMAT_VERSION}); upgrade "
                         f"fusionnet-tf or retrain with 'fusionnet train-edges'")
    if header.get("feature_names") != list(FEATURE_NAMES):
        raise ValueError(f"{option} {path}: trained on features {header.get('feature_names')} "
                         f"but this fusionnet-tf computes {list(FEATURE_NAMES)}; retrain it with "
                         f"'fusionnet train-edges'")
    missing = [key for key in PACKED_ARRAYS if key not in arrays]
    if missing:
        raise ValueError(f"{not_one}; missing arrays {missing}")
    packed = dict(arrays, depth=int(header["depth"]))
    params = SegmentParams.from_dict(header.get("params"), source=f"{option} {path}")
    return EdgeClassifier(packed, params, header.get("threshold", MERGE_PROBABILITY),
                          header.get("info"))


# === Training ===

def training_examples(membrane, gt_ids, params):
    """Feature rows and merge/keep labels of one slice, at every level of an oracle agglomeration.

    The slice's fragments are merged with the ground truth as the judge:
    edges whose fragments share a majority ground-truth id (``edge_labels``)
    are merged, weakest boundary (lowest mean) first, and every edge is
    recorded each time its features change, so the examples include the
    large merged regions that the classifier meets when it agglomerates.
    Edges touching a fragment that is mostly ground-truth boundary are
    dropped (and never merged).

    Args:
        membrane: (H, W) float32 membrane probability in [0, 1].
        gt_ids: (H, W) int ground-truth instance ids, 0 = boundary.
        params: ``SegmentParams`` of the fragments.

    Returns:
        ``(features, labels)``: float32 (M, 16) and int8 (M,) in {0, 1}.
    """
    fragments, count, _ = seeded_watershed(membrane, params)
    majority, valid = fragment_majority(fragments, gt_ids, count)
    state = build_graph(fragments, count, membrane)
    rows, targets = [], []

    def oracle(edges):
        features = state.features(edges)
        ends = np.array([state.ends[edge] for edge in edges], np.int64).reshape(-1, 2)
        labels = edge_labels(ends[:, 0], ends[:, 1], majority, valid)
        kept = labels != DROPPED
        rows.append(features[kept])
        targets.append(labels[kept])
        return np.where(labels == MERGE, 2.0 - features[:, 0], 0.0)  # >= 1: merge, weakest first

    merge_greedy(state, oracle, threshold=1.0)
    if not rows:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32), np.zeros(0, np.int8)
    return np.concatenate(rows), np.concatenate(targets)


def _as_stacks(membrane, labels, ground_truth):
    """``(membrane, gt_ids)`` as (N, H, W) stacks, checked to match."""
    membrane = check_membrane(membrane)
    membrane = membrane[None] if membrane.ndim == 2 else membrane
    gt = ground_truth_ids(labels, ground_truth)
    gt = gt[None] if gt.ndim == 2 else gt
    if gt.shape != membrane.shape:
        raise ValueError(f"labels have shape {gt.shape} but the membrane map has "
                         f"{membrane.shape}")
    return membrane, gt


def train_edge_classifier(membrane, labels, params=None, ground_truth="membrane", trees=TREES,
                          seed=0, threshold=MERGE_PROBABILITY, progress=False):
    """Train a random forest on the edges of labelled slices.

    Args:
        membrane: (N, H, W) or (H, W) float membrane probability in [0, 1].
        labels: ground truth of the same shape: binary, 1 = membrane
            (``ground_truth="membrane"``; cells are the 4-connected interior
            components of each slice, as the ISBI scores see them) or instance
            ids, 0 = boundary (``"segments"``).
        params: ``SegmentParams`` of the fragments and of the small-segment
            clean-up; None for ``SegmentParams()``.
        ground_truth: ``"membrane"`` or ``"segments"``.
        trees: int >= 1, trees in the forest. Defaults to 100.
        seed: int, the forest's ``random_state``. Defaults to 0.
        threshold: float, the p(merge) at which merging stops. Defaults to 0.5.
        progress: bool; a progress bar over slices on stderr.

    Returns:
        ``EdgeClassifier``.

    Raises:
        ValueError: shapes differ, bad maps, or the slices give no edge of one
            of the two kinds (nothing to learn).
    """
    from sklearn import __version__ as sklearn_version
    from sklearn.ensemble import RandomForestClassifier
    from tqdm import tqdm

    check_int("trees", trees)
    params = params or SegmentParams()
    membrane, gt = _as_stacks(membrane, labels, ground_truth)
    pairs = [training_examples(slice_map, slice_gt, params) for slice_map, slice_gt in
             tqdm(list(zip(membrane, gt)), desc="edge examples", unit="slice", file=sys.stderr,
                  disable=not progress or len(membrane) < 2)]
    features = np.concatenate([pair[0] for pair in pairs])
    targets = np.concatenate([pair[1] for pair in pairs])
    kinds = set(np.unique(targets).tolist())
    if kinds != {0, 1}:
        raise ValueError(f"the {len(membrane)} training slice(s) gave {len(targets)} labelled "
                         f"edges, none of which is a {'merge' if 1 not in kinds else 'keep'} "
                         f"edge: nothing to learn (more slices, or more seeds: lower --set "
                         f"min_seed_size / raise seed_threshold)")
    forest = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1,
                                    **FOREST_OPTIONS)
    forest.fit(features, targets)
    info = {"slices": int(len(membrane)), "examples": int(len(targets)),
            "merge_share": round(float(np.mean(targets == MERGE)), 4), "trees": trees,
            "seed": seed, "forest": dict(FOREST_OPTIONS), "scikit_learn": sklearn_version,
            "ground_truth": ground_truth}
    return EdgeClassifier(pack_forest(forest), params, threshold, info)


# === Cross-validation ===

def cross_validate_edge_classifier(membrane, labels, folds=5, params=None,
                                   ground_truth="membrane", trees=TREES, seed=0,
                                   threshold=MERGE_PROBABILITY, callback=None):
    """Held-out scores of the edge classifier: train on K-1 folds, score the other.

    The slices are split into ``folds`` contiguous folds (``tune.make_folds``,
    the folds of ``tune-segment --cv``). For each fold a classifier is
    trained on the other folds' slices and segments the fold's slices, which
    are scored with the ISBI rules (``metrics.segmentation_counts``). The
    pooled held-out score pools the contingency counts of all folds (each
    scored by the classifier that never saw it).

    Args:
        membrane: (N, H, W) float membrane probability in [0, 1].
        labels: (N, H, W) ground truth (see ``train_edge_classifier``).
        folds: int in [2, N].
        params, ground_truth, trees, seed, threshold: as
            ``train_edge_classifier``.
        callback: optional function called with each fold's row when it is done.

    Returns:
        JSON-able dict: ``folds`` (per fold: ``fold``, ``slices``, held-out
        ``v_rand`` / ``v_info``, ``segments``, ``train_examples``),
        ``pooled_held_out`` (``v_rand``, ``v_info``), ``params``,
        ``threshold``.

    Raises:
        ValueError: ``folds`` out of range, bad inputs.
    """
    from fusionnet_tf.metrics import scores_from_counts, segmentation_counts
    from fusionnet_tf.segmentation.tune import make_folds

    params = params or SegmentParams()
    membrane, _ = _as_stacks(membrane, labels, ground_truth)
    labels = np.asarray(labels)
    labels = labels[None] if labels.ndim == 2 else labels
    parts = make_folds(len(membrane), folds)
    rows, counts = [], []
    for fold, held in enumerate(parts):
        train = [index for index in range(len(membrane)) if index not in set(held)]
        classifier = train_edge_classifier(membrane[train], labels[train], params, ground_truth,
                                           trees, seed, threshold)
        segments, max_id = classifier.segment(membrane[held])
        fold_counts = segmentation_counts(labels[held], segments, ground_truth=ground_truth)
        counts.append(fold_counts)
        v_rand, v_info = scores_from_counts(*fold_counts)
        row = {"fold": fold, "slices": held, "v_rand": v_rand, "v_info": v_info,
               "segments": int(max_id), "train_examples": classifier.info["examples"]}
        rows.append(row)
        if callback:
            callback(row)
    v_rand, v_info = scores_from_counts(*(np.concatenate(arrays) for arrays in zip(*counts)))
    return {"folds": rows, "pooled_held_out": {"v_rand": v_rand, "v_info": v_info},
            "params": params.to_dict(), "threshold": float(threshold)}


def format_edge_cv_report(report):
    """Lines for each fold's held-out score and the pooled held-out score."""
    lines = [f"{'fold':>4}  {'slices':>9}  {'held-out V_rand':>15}  {'V_info':>7}  "
             f"{'segments':>8}  {'training edges':>14}"]
    for row in report["folds"]:
        span = f"{row['slices'][0]}-{row['slices'][-1]}"
        lines.append(f"{row['fold']:>4}  {span:>9}  {row['v_rand']:>15.4f}  "
                     f"{row['v_info']:>7.4f}  {row['segments']:>8}  {row['train_examples']:>14}")
    pooled = report["pooled_held_out"]
    lines.append(f"pooled held-out: V_rand {pooled['v_rand']:.4f}, V_info {pooled['v_info']:.4f}")
    return "\n".join(lines)
