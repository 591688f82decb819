"""Post-processing parameters: one dataclass, read from and written to JSON.

``SegmentParams`` holds every knob of ``fusionnet_tf.segmentation.segmenter``
(seeds, flooding, agglomeration, size filter). It is plain data: the tuner
writes it, ``fusionnet segment --params FILE`` reads it, and the shipped model
carries its own tuned copy (``fusionnet_tf/weights/*.segment.json``).
"""

import dataclasses
import json
from pathlib import Path

from fusionnet_tf.checks import check_choice, check_int, check_range
from fusionnet_tf.io.outputs import atomic_path

SEED_METHODS = ("threshold", "distance")
MERGE_STATISTICS = ("mean", "quantile")
MODES = ("2d", "3d")
ANISOTROPIC = 3.0  # from this voxel depth / pixel width on, 3d mode links 2D sections


@dataclasses.dataclass(frozen=True)
class SegmentParams:
    """Parameters of the watershed + agglomeration recipe.

    Attributes:
        sigma: float >= 0. Gaussian smoothing (pixels, in-plane) of the
            membrane map before seeding and flooding; 0 = none.
        seed_method: ``"threshold"`` (seeds are the connected regions where
            the smoothed membrane probability is below ``seed_threshold``) or
            ``"distance"`` (seeds are maxima of the distance transform of
            ``membrane < seed_threshold``, as in elf's distance-transform
            watershed).
        seed_threshold: float in (0, 1). Membrane probability below which a
            pixel may seed a segment.
        seed_distance: float >= 0. ``"distance"`` seeds only: minimum distance
            in pixels between two maxima and smoothing of the distance map
            (sigma = ``seed_distance / 4``).
        min_seed_size: int >= 0. ``"threshold"`` seeds with fewer pixels
            are dropped (their pixels are flooded from neighbouring seeds).
        merge_threshold: float in [0, 1]. Agglomeration merges neighbouring
            segments in order of their boundary statistic while it is below
            this value; 0 = no agglomeration.
        merge_statistic: ``"mean"`` (average membrane probability along the
            shared boundary: average linkage) or ``"quantile"``.
        merge_quantile: float in [0, 1]. The quantile for
            ``merge_statistic="quantile"`` (0.5 = median).
        min_size: int >= 0. Segments smaller than this (pixels, or voxels in
            3d mode) are merged into the neighbour with the weakest boundary.
        anisotropy: float >= 1. Voxel depth / pixel width (ISBI 2012: 50 nm /
            4 nm = 12.5). In 3d mode, below ``ANISOTROPIC`` (3) the volume is
            segmented by a 3D watershed with smoothing and distances scaled
            along z; from 3 on (thick sections, where cells shift between
            sections and a 3D flood leaks across them) each section is
            segmented in 2D and segments are linked across sections by
            overlap.
        z_link_overlap: float in (0, 1]. 3d mode with thick sections: two
            segments in neighbouring sections get one id when the
            intersection over union of their footprints is at least this.

    Example:
    >>> SegmentParams(seed_threshold=0.2).replace(min_size=50).min_size
    50
    """

    sigma: float = 1.0
    seed_method: str = "threshold"
    seed_threshold: float = 0.1
    seed_distance: float = 8.0
    min_seed_size: int = 4
    merge_threshold: float = 0.3
    merge_statistic: str = "mean"
    merge_quantile: float = 0.5
    min_size: int = 50
    anisotropy: float = 12.5
    z_link_overlap: float = 0.5

    def __post_init__(self):
        check_range("sigma", self.sigma, 0)
        check_choice("seed_method", self.seed_method, SEED_METHODS)
        check_range("seed_threshold", self.seed_threshold, 0, 1, open_low=True, open_high=True)
        check_range("seed_distance", self.seed_distance, 0)
        check_int("min_seed_size", self.min_seed_size, minimum=0)
        check_range("merge_threshold", self.merge_threshold, 0, 1)
        check_choice("merge_statistic", self.merge_statistic, MERGE_STATISTICS)
        check_range("merge_quantile", self.merge_quantile, 0, 1)
        check_int("min_size", self.min_size, minimum=0)
        check_range("anisotropy", self.anisotropy, 1)
        check_range("z_link_overlap", self.z_link_overlap, 0, 1, open_low=True)

    def replace(self, **changes):
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """Plain dict of all fields (JSON-able)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="params"):
        """Build from a dict; unknown keys raise ``ValueError`` naming them and ``source``."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a JSON object of parameters, "
                             f"received {type(values).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown segmentation parameter(s) {unknown}; "
                             f"known: {sorted(known)}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from exc


def load_params(path, cls=SegmentParams):
    """Read ``SegmentParams`` (or ``cls``, e.g. ``AffinityParams``) from a JSON file.

    The file holds one object of parameters, either at the top level or under
    ``"params"`` (the tuner's output also stores its search there).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: invalid JSON, unknown keys or out-of-range values (naming
            the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--params file not found: {path}")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(values, dict) and isinstance(values.get("params"), dict):
        values = values["params"]
    return cls.from_dict(values, source=str(path))


def save_params(path, params, extra=None):
    """Write ``params`` (and optional JSON-able ``extra`` info) atomically as JSON."""
    document = {"params": params.to_dict()}
    document.update(extra or {})
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(document, indent=2) + "\n")


PRETRAINED_PARAMS = Path(__file__).resolve().parent.parent / "weights" / "fusionnet_isbi2012.segment.json"


def default_params():
    """The parameters tuned for the shipped model (``fusionnet_tf.load_pretrained``).

    They were tuned with ``fusionnet tune-segment`` on the model's validation
    slices (ISBI 2012 slices 20-24) only; ``fusionnet segment`` uses them
    when no ``--params`` file is given. For another model, tune your own.

    Returns:
        ``SegmentParams``.
    """
    return load_params(PRETRAINED_PARAMS)
