"""Agglomeration of an over-segmentation on its region adjacency graph.

The graph has one node per segment and one edge per pair of touching
segments. An edge carries the statistics of the membrane probability along the
shared boundary: the number of neighbouring pixel pairs across it (boundary
length), their sum and, for quantiles, a histogram. A boundary pixel pair
``(a, b)`` contributes ``max(p[a], p[b])``, the higher membrane probability of
the two sides (the crest the watershed stopped at).

``agglomerate`` merges, in order, the pair with the weakest boundary while its
statistic stays below a threshold, updating the statistics of the merged
node's edges by adding counts, sums and histograms: with the mean this is
average linkage (the waterz / GASP "mean affinity" agglomeration: Funke et al.
2018, https://arxiv.org/abs/1709.02974; Bailoni et al. 2022,
https://arxiv.org/abs/1906.11713). Segments smaller than ``min_size`` are then
merged into the neighbour with the weakest boundary.

The graph is built with vectorised NumPy; the merge loop is a binary heap
over edges with lazy invalidation (O(E log E)), which at a few hundred to a
few thousand segments per EM slice takes milliseconds.
"""

import heapq

import numpy as np

HISTOGRAM_BINS = 64


def boundary_pairs(labels, membrane):
    """Neighbouring pixel pairs that straddle two segments.

    Args:
        labels: (H, W) or (Z, H, W) int labels (0 is an ordinary id here).
        membrane: float membrane map of the same shape.

    Returns:
        ``(low, high, value)``: int64 ids with ``low < high`` and the float32
        boundary value ``max(p[a], p[b])`` of each 4-/6-connected pair.
    """
    lows, highs, values = [], [], []
    for axis in range(labels.ndim):
        first = [slice(None)] * labels.ndim
        second = [slice(None)] * labels.ndim
        first[axis], second[axis] = slice(None, -1), slice(1, None)
        a, b = labels[tuple(first)], labels[tuple(second)]
        crossing = a != b
        a, b = a[crossing].astype(np.int64), b[crossing].astype(np.int64)
        lows.append(np.minimum(a, b))
        highs.append(np.maximum(a, b))
        values.append(np.maximum(membrane[tuple(first)][crossing],
                                 membrane[tuple(second)][crossing]).astype(np.float32))
    return np.concatenate(lows), np.concatenate(highs), np.concatenate(values)


def region_adjacency(labels, membrane, histogram=False):
    """Region adjacency graph with boundary statistics.

    Args:
        labels: (H, W) or (Z, H, W) int labels 1..K (0 allowed as a node).
        membrane: float membrane probability of the same shape, in [0, 1].
        histogram: bool; also return per-edge histograms (for quantiles).

    Returns:
        dict of 1D arrays over the E edges: ``u``, ``v`` (int64, u < v),
        ``length`` (int64 boundary pixel pairs), ``total`` (float64 sum of
        boundary values) and, with ``histogram``, ``hist`` (E, 64) int64
        counts over [0, 1].
    """
    span = int(labels.max()) + 1 if labels.size else 1
    return graph_from_pairs(*boundary_pairs(labels, membrane), span, histogram)


def graph_from_pairs(low, high, value, span, histogram=False):
    """Region adjacency graph from boundary pairs (see ``region_adjacency``).

    Args:
        low, high: int64 ids of the two sides of each pair, ``low < high``.
        value: float32 boundary value of each pair, in [0, 1] (membrane-like:
            low = weak boundary).
        span: int greater than every id.
        histogram: bool; also return per-edge histograms (for quantiles).

    Returns:
        dict as ``region_adjacency``.
    """
    keys, edge_of_pair = _unique_inverse(low * span + high)
    graph = {
        "u": keys // span,
        "v": keys % span,
        "length": np.bincount(edge_of_pair, minlength=keys.size).astype(np.int64),
        "total": np.bincount(edge_of_pair, weights=value, minlength=keys.size),
    }
    if histogram:
        bins = np.minimum((value * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
        flat = np.bincount(edge_of_pair * HISTOGRAM_BINS + bins,
                           minlength=keys.size * HISTOGRAM_BINS)
        graph["hist"] = flat.reshape(keys.size, HISTOGRAM_BINS).astype(np.int64)
    return graph


def sum_graphs(graphs, span):
    """One region adjacency graph from graphs of parts of a volume (statistics added).

    Each graph holds the boundary pairs of one part (e.g. a block, with the
    pairs across its faces to later blocks), every pair in exactly one part;
    summing lengths, totals and histograms per edge gives the graph of the
    union (the totals up to float64 rounding: they are added in another order).

    Args:
        graphs: list of dicts from ``graph_from_pairs`` (all with or all
            without ``hist``).
        span: int greater than every id.

    Returns:
        dict as ``region_adjacency``, edges sorted by ``(u, v)``.
    """
    histogram = bool(graphs) and "hist" in graphs[0]
    graph = {"u": np.zeros(0, np.int64), "v": np.zeros(0, np.int64),
             "length": np.zeros(0, np.int64), "total": np.zeros(0, np.float64)}
    if histogram:
        graph["hist"] = np.zeros((0, HISTOGRAM_BINS), np.int64)
    if not graphs:
        return graph
    keys = np.concatenate([np.asarray(g["u"], np.int64) * span + np.asarray(g["v"], np.int64)
                           for g in graphs])
    unique, edge = _unique_inverse(keys)
    graph = {
        "u": unique // span,
        "v": unique % span,
        "length": np.bincount(edge, weights=np.concatenate([g["length"] for g in graphs]),
                              minlength=unique.size).astype(np.int64),
        "total": np.bincount(edge, weights=np.concatenate([g["total"] for g in graphs]),
                             minlength=unique.size),
    }
    if histogram:
        order = np.argsort(edge, kind="stable")
        starts = np.flatnonzero(np.diff(edge[order], prepend=-1))  # every edge occurs
        hist = np.concatenate([g["hist"] for g in graphs]).astype(np.int64)[order]
        graph["hist"] = np.add.reduceat(hist, starts, axis=0) if hist.size else \
            np.zeros((0, HISTOGRAM_BINS), np.int64)
    return graph


def _unique_inverse(keys):
    """``np.unique(keys, return_inverse=True)`` with a stable sort.

    A stable sort (timsort) is several times faster than ``np.unique``'s
    quicksort on boundary-pair keys, which come in long sorted runs (raster
    order over sections).
    """
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    first = np.empty(ordered.size, bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(ordered.size, np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ordered[first], inverse


def histogram_quantile(hist, q):
    """The ``q`` quantile of values in [0, 1] summarised by histograms (bin centres).

    Args:
        hist: (..., B) int counts over B equal bins of [0, 1] (one histogram
            per row).
        q: float in [0, 1].

    Returns:
        float array of shape ``hist.shape[:-1]`` (a float for one
        histogram): the centre of the first bin whose cumulative count
        reaches ``q`` of the total.
    """
    hist = np.asarray(hist)
    cumulative = np.cumsum(hist, axis=-1)
    reached = cumulative >= q * cumulative[..., -1:]
    index = np.argmax(reached, axis=-1)  # the first bin that reaches the quantile
    centres = (index + 0.5) / hist.shape[-1]
    return float(centres) if np.ndim(centres) == 0 else centres


class _Graph:
    """Mutable adjacency graph for merging (internal to ``agglomerate``).

    Edges are indices into per-edge lists; ``ends[e]`` are the edge's current
    end nodes and ``stamp[e]`` counts changes of its statistic (-1 = the edge
    no longer exists), so heap entries can be checked for staleness.
    """

    def __init__(self, count, graph, sizes, statistic, quantile):
        self.parent = np.arange(count + 1)
        self.size = sizes.astype(np.int64).copy()
        self.adjacent = [dict() for _ in range(count + 1)]
        self.ends = list(zip(graph["u"].tolist(), graph["v"].tolist()))
        self.length = graph["length"].tolist()
        self.total = graph["total"].tolist()
        self.hist = list(graph["hist"]) if statistic == "quantile" else None
        self.quantile = quantile
        self.stamp = [0] * len(self.ends)
        for edge, (u, v) in enumerate(self.ends):
            self.adjacent[u][v] = edge
            self.adjacent[v][u] = edge

    def statistic(self, edge):
        """The boundary statistic of one edge."""
        if self.hist is not None:
            return histogram_quantile(self.hist[edge], self.quantile)
        return self.total[edge] / self.length[edge]

    def all_statistics(self):
        """The statistic of every edge at once (vectorised), as a list."""
        return self.statistics(range(len(self.ends)))

    def statistics(self, edges):
        """The statistics of ``edges`` (a sequence of edge indices) in one call, as a list.

        One vectorised quantile over the edges a merge changed costs about as
        much as one per edge did (numpy's per-call overhead dominates).
        """
        if not edges:
            return []
        if self.hist is not None:
            hists = np.stack([self.hist[edge] for edge in edges])
            return histogram_quantile(hists, self.quantile).tolist()
        return [self.total[edge] / self.length[edge] for edge in edges]

    def merge(self, keep, gone):
        """Merge node ``gone`` into ``keep``; return the edges whose statistic changed."""
        changed = []
        for neighbour, edge in self.adjacent[gone].items():
            del self.adjacent[neighbour][gone]
            if neighbour == keep:
                self.stamp[edge] = -1
                continue
            existing = self.adjacent[keep].get(neighbour)
            if existing is None:  # the boundary moves to ``keep`` unchanged
                self.adjacent[keep][neighbour] = edge
                self.adjacent[neighbour][keep] = edge
                self.ends[edge] = (keep, neighbour)
                continue
            self.length[existing] += self.length[edge]
            self.total[existing] += self.total[edge]
            if self.hist is not None:
                self.hist[existing] = self.hist[existing] + self.hist[edge]
            self.stamp[existing] += 1
            self.stamp[edge] = -1  # folded into ``existing``
            changed.append(existing)
        self.adjacent[gone] = {}
        self.parent[gone] = keep
        self.size[keep] += self.size[gone]
        return changed

    def roots(self):
        """Final id of every original node (parents followed to the root)."""
        return follow_parents(self.parent)


def follow_parents(parent):
    """The root of every node of a merge forest (``parent[root] == root``).

    Args:
        parent: int array (count + 1,), each node's parent.

    Returns:
        int array of the same shape: each node's root.
    """
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def agglomerate(labels, count, membrane, threshold, min_size=0, statistic="mean", quantile=0.5):
    """Merge segments across weak boundaries, then absorb small segments.

    Args:
        labels: (H, W) or (Z, H, W) int labels 1..count covering every pixel.
        count: int, the largest label.
        membrane: float32 membrane probability of the same shape, in [0, 1].
        threshold: float; pairs are merged, weakest boundary first, while the
            boundary statistic is below it (0 = no merging by threshold).
        min_size: int; afterwards, segments with fewer pixels are merged into
            the neighbour with the weakest boundary, smallest segment first.
        statistic: ``"mean"`` or ``"quantile"`` of the boundary values.
        quantile: float in [0, 1] for ``statistic="quantile"``.

    Returns:
        int array of length ``count + 1`` mapping each old id to its merged id
        (an old id; apply with ``mapping[labels]``).

    Example:
    >>> labels = np.array([[1, 1, 2, 2]]); membrane = np.array([[0, .1, .1, 0]], np.float32)
    >>> agglomerate(labels, 2, membrane, threshold=0.5)[labels]
    array([[1, 1, 1, 1]])
    """
    graph = region_adjacency(labels, membrane, histogram=statistic == "quantile")
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    return agglomerate_graph(graph, count, sizes, threshold, min_size, statistic, quantile)


def agglomerate_graph(graph, count, sizes, threshold, min_size=0, statistic="mean",
                      quantile=0.5):
    """``agglomerate`` on a ready region adjacency graph (any boundary values).

    Args:
        graph: dict from ``region_adjacency`` or ``graph_from_pairs`` (with
            ``hist`` for ``statistic="quantile"``).
        count: int, the largest node id.
        sizes: int (count + 1,) pixels per node.
        threshold, min_size, statistic, quantile: as ``agglomerate``.

    Returns:
        int array (count + 1,): the merged id of each node.
    """
    state = _Graph(count, graph, sizes, statistic, quantile)
    if threshold > 0:
        _merge_below(state, threshold)
    if min_size > 1:
        _absorb_small(state, min_size)
    return state.roots()


def _merge_below(state, threshold):
    """Merge the weakest boundary while its statistic is below ``threshold``."""
    heap = [(value, edge, 0) for edge, value in enumerate(state.all_statistics())
            if value < threshold]
    heapq.heapify(heap)
    while heap:
        _, edge, stamp = heapq.heappop(heap)
        if state.stamp[edge] != stamp:
            continue  # stale: the statistic changed or the edge is gone
        u, v = state.ends[edge]
        keep, gone = (u, v) if len(state.adjacent[u]) >= len(state.adjacent[v]) else (v, u)
        changed = state.merge(keep, gone)
        for edge, value in zip(changed, state.statistics(changed)):
            if value < threshold:
                heapq.heappush(heap, (value, edge, state.stamp[edge]))


def _absorb_small(state, min_size):
    """Merge segments below ``min_size`` into their weakest-boundary neighbour."""
    heap = [(size, node) for node, size in enumerate(state.size.tolist()) if 0 < size < min_size]
    heapq.heapify(heap)
    while heap:
        size, node = heapq.heappop(heap)
        if state.parent[node] != node or state.size[node] != size or not state.adjacent[node]:
            continue  # merged away, grown since, or alone in the image
        neighbours = state.adjacent[node]
        target = min(neighbours, key=lambda other: (state.statistic(neighbours[other]), other))
        state.merge(target, node)
        if state.size[target] < min_size:
            heapq.heappush(heap, (int(state.size[target]), target))
