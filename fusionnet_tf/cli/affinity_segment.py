"""The affinity paths of ``fusionnet segment`` and ``fusionnet tune-segment``.

Not a command of its own: ``segment`` and ``tune-segment`` call these when
their input file's metadata says ``"kind": "affinities"`` (see
``fusionnet_tf.data.affinity_io``).
"""

import sys
import time


def resolve_affinity_params(args, model=None):
    """``AffinityParams`` from ``--params``, ``--set`` and ``--method`` (in that order).

    Without ``--params`` the defaults are the parameters shipped with the
    pretrained model ``model`` (a registry name or its weights path; see
    ``fusionnet_tf.pretrained``) if it ships some, else ``AffinityParams()``.
    """
    from fusionnet_tf.cli.segment import resolve_params
    from fusionnet_tf.segmentation.affinity_params import AffinityParams

    params = resolve_params(args, AffinityParams, default=shipped_params(model))
    method = getattr(args, "method", None)
    return params.replace(method=method) if method else params


def shipped_params(model):
    """``AffinityParams`` shipped with the pretrained model ``model``, or None.

    Args:
        model: a registry name, a model path (matched against the registry's
            weights), or None. Unknown models and models whose parameters are
            not shipped give None.
    """
    from fusionnet_tf.pretrained import REGISTRY, pretrained_name_of
    from fusionnet_tf.segmentation import load_params
    from fusionnet_tf.segmentation.affinity_params import AffinityParams

    name = model if model in REGISTRY else pretrained_name_of(model)
    if name is None or REGISTRY[name].kind != "affinities":
        return None
    path = REGISTRY[name].params_path
    return load_params(path, AffinityParams) if path is not None and path.is_file() else None


def predicting_model(metadata):
    """The model named in an affinity file's metadata (``predict``'s or ``predict-volume``'s)."""
    metadata = metadata or {}
    volume = metadata.get("fusionnet_volume")
    if isinstance(volume, dict) and volume.get("model"):
        return volume["model"]
    return metadata.get("model")


def segment_and_write_affinities(affs, offsets, output, params, source):
    """Segment (C, Z, Y, X) affinities with ``params``; write ``output``; one line on stderr."""
    from fusionnet_tf.segmentation.affinities import segment_affinities
    from fusionnet_tf.segmentation.io import write_labels

    began = time.perf_counter()
    labels, max_id = segment_affinities(affs, offsets, params)
    seconds = time.perf_counter() - began
    write_labels(output, labels, {"source": str(source), "kind": "segmentation",
                                  "method": params.method, "params": params.to_dict()})
    print(f"wrote {output}: {labels.shape} {labels.dtype}, {max_id} segments "
          f"({params.method}, {labels.size / max(seconds, 1e-9) / 1e6:.2f} M voxels/s)",
          file=sys.stderr)


def _refuse_membrane_options(args):
    """One-line errors for membrane-map options given with an affinity file."""
    for option, given in (("--keep-boundaries", getattr(args, "keep_boundaries", False)),
                          ("--image", getattr(args, "image", None)),
                          ("--overlay", getattr(args, "overlay", None)),
                          ("--pred-convention isbi",
                           getattr(args, "pred_convention", "membrane") != "membrane")):
        if given:
            raise ValueError(f"{option} applies to membrane maps; PRED {args.pred} is an "
                             f"affinity file (segmented in 3D with --method)")


def run_segment(args):
    """``fusionnet segment AFF -o LABELS``: read, segment in 3D, write. Returns 0."""
    from fusionnet_tf.cli.segment import check_inputs_outputs
    from fusionnet_tf.data.affinity_io import affinity_metadata, read_affinities
    from fusionnet_tf.segmentation.io import check_label_output

    _refuse_membrane_options(args)
    check_label_output(args.output)
    check_inputs_outputs([("PRED", args.pred)], args.output)
    params = resolve_affinity_params(args, model=predicting_model(affinity_metadata(args.pred)))
    affs, offsets = read_affinities(args.pred)
    segment_and_write_affinities(affs, offsets, args.output, params, args.pred)
    return 0


def run_tune(args):
    """``fusionnet tune-segment --pred AFF --labels IDS``: tune ``AffinityParams``. Returns 0."""
    from tqdm import tqdm

    from fusionnet_tf.data.affinity_io import read_affinities
    from fusionnet_tf.segmentation import save_params
    from fusionnet_tf.segmentation.affinity_params import AffinityParams
    from fusionnet_tf.segmentation.affinity_tune import tune_affinities
    from fusionnet_tf.segmentation.io import read_segments
    from fusionnet_tf.segmentation.params import load_params
    from fusionnet_tf.segmentation.tune import format_rows

    if getattr(args, "pred_convention", "membrane") != "membrane":
        raise ValueError(f"--pred-convention applies to membrane maps; --pred {args.pred} is an "
                         f"affinity file")
    start = load_params(args.start, AffinityParams) if args.start else AffinityParams()
    if getattr(args, "method", None):
        start = start.replace(method=args.method)
    labels = read_segments(args.labels, "--labels")
    affs, offsets = read_affinities(args.pred)
    if labels.shape != affs.shape[1:]:
        raise ValueError(f"--labels {args.labels} has shape {labels.shape} but --pred "
                         f"{args.pred} covers {affs.shape[1:]}")
    from fusionnet_tf.cli.evaluate import scored_ground_truth

    labels = scored_ground_truth(labels, getattr(args, "gt_components", False))
    with tqdm(total=args.budget, desc="tune-segment", unit="setting", file=sys.stderr) as bar:
        best, rows = tune_affinities(affs, offsets, labels, budget=args.budget, start=start,
                                     seed=args.seed, callback=lambda row: bar.update(1))
    print(format_rows(rows))
    top = min(rows, key=lambda row: (row["adapted_rand_error"], -row["v_info"]))
    save_params(args.output, best, extra={
        "adapted_rand_error": top["adapted_rand_error"], "v_info": top["v_info"],
        "kind": "affinities", "pred": str(args.pred), "labels": str(args.labels),
        "shape": list(labels.shape), "settings_tried": len(rows),
        "ground_truth": "components" if getattr(args, "gt_components", False) else "ids"})
    print(f"wrote {args.output}: adapted Rand error {top['adapted_rand_error']:.4f} (3D)",
          file=sys.stderr)
    return 0
