"""Parameters of affinity segmentation: one dataclass, read from and written to JSON.

``AffinityParams`` holds every knob of
``fusionnet_tf.segmentation.affinities`` (fragments, agglomeration, mutex
watershed, size filter), as ``SegmentParams`` does for membrane maps. It is
plain data: ``fusionnet tune-segment`` writes it, ``fusionnet segment AFF
--params FILE`` reads it (``load_params(path, AffinityParams)``).
"""

import dataclasses

from fusionnet_tf.checks import check_choice, check_int, check_range
from fusionnet_tf.segmentation.params import SegmentParams

METHODS = ("agglomeration", "mws")
FRAGMENTS = ("auto", "2d", "3d")
AFFINITY_SEED_METHODS = ("distance", "minima")
BOUNDARY_STATISTICS = ("mean", "min")
MERGE_STATISTICS = ("mean", "quantile")


@dataclasses.dataclass(frozen=True)
class AffinityParams:
    """Parameters of fragments + agglomeration (or mutex watershed) on affinities.

    Attributes:
        method: ``"agglomeration"`` (watershed fragments merged on a region
            adjacency graph) or ``"mws"`` (mutex watershed on all offsets).
        fragments: ``"2d"`` (seeds and flooding per section, for thick
            sections), ``"3d"`` (one 6-connected flood), or ``"auto"``: 2d
            when ``anisotropy`` >= 3.
        anisotropy: float >= 1, voxel depth / pixel width (SNEMI3D: 30 / 6 = 5).
        boundary: ``"mean"``: the boundary map is ``1 - the mean affinity of
            each voxel's nearest-neighbour edges`` (the project convention);
            ``"min"``: ``1 - the lowest of them``, which keeps a one-voxel
            boundary between touching cells sharp (purer fragments, but on
            degraded SNEMI3D ground-truth affinities one bad merge swings
            the score more than with the mean).
        sigma: float >= 0, Gaussian smoothing (in-plane pixels) of the
            boundary map before seeding and flooding.
        seed_method: ``"distance"`` (maxima of the distance transform of
            ``boundary < seed_threshold``) or ``"minima"`` (regional minima of
            the boundary map below ``seed_threshold``).
        seed_threshold: float in (0, 1): boundary value below which a voxel
            may seed. With the mean, a one-voxel boundary between touching
            cells is only 1/4 (2D) or 1/6 (3D) high, hence the low default.
        seed_distance: float >= 0, pixels: minimum distance between two
            distance-transform maxima (and smoothing of the distance map).
        merge_threshold: float in [0, 1]: neighbouring fragments merge, the
            most affine first, while the statistic of the affinities across
            their shared face is above it (1 = no merging).
        merge_statistic: ``"mean"`` (average linkage) or ``"quantile"``.
        merge_quantile: float in [0, 1], the affinity quantile for
            ``merge_statistic="quantile"``.
        min_size: int >= 0, voxels: smaller segments are merged into the
            neighbour with the highest mean affinity across their face.
        mws_bias: float in [0, 1]: mutex watershed; a nearest-neighbour
            affinity above it attracts, below it repels.
        mws_long_range_bias: float in [0, 1]: the same for long-range offsets
            (higher = long-range edges repel more often).
        mws_stride: int >= 1: use long-range edges only every ``mws_stride``
            voxels in-plane (faster, fewer spurious splits).

    Example:
    >>> AffinityParams(merge_threshold=0.7).replace(method="mws").method
    'mws'
    """

    method: str = "agglomeration"
    fragments: str = "auto"
    anisotropy: float = 5.0
    boundary: str = "mean"
    sigma: float = 0.0
    seed_method: str = "distance"
    seed_threshold: float = 0.2
    seed_distance: float = 2.0
    merge_threshold: float = 0.5
    merge_statistic: str = "mean"
    merge_quantile: float = 0.5
    min_size: int = 100
    mws_bias: float = 0.5
    mws_long_range_bias: float = 0.5
    mws_stride: int = 1

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_choice("fragments", self.fragments, FRAGMENTS)
        check_range("anisotropy", self.anisotropy, 1)
        check_choice("boundary", self.boundary, BOUNDARY_STATISTICS)
        check_range("sigma", self.sigma, 0)
        check_choice("seed_method", self.seed_method, AFFINITY_SEED_METHODS)
        check_range("seed_threshold", self.seed_threshold, 0, 1, open_low=True, open_high=True)
        check_range("seed_distance", self.seed_distance, 0)
        check_range("merge_threshold", self.merge_threshold, 0, 1)
        check_choice("merge_statistic", self.merge_statistic, MERGE_STATISTICS)
        check_range("merge_quantile", self.merge_quantile, 0, 1)
        check_int("min_size", self.min_size, minimum=0)
        check_range("mws_bias", self.mws_bias, 0, 1)
        check_range("mws_long_range_bias", self.mws_long_range_bias, 0, 1)
        check_int("mws_stride", self.mws_stride, minimum=1)

    # the same plain-data helpers as SegmentParams (they only use the dataclass fields)
    replace = SegmentParams.replace
    to_dict = SegmentParams.to_dict
    from_dict = classmethod(SegmentParams.from_dict.__func__)
