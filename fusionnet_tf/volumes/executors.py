"""Running block tasks in this process or on Dask: the one home of both volume commands.

``predict-volume`` (``volumes.runner``) and ``segment-volume``
(``segmentation.blockwise``) cut a volume into blocks and run one task per
block. Both run them through this module:

- ``executor(workers, scheduler)``: a context giving a ``LocalExecutor``
  (``workers=0``: tasks one after another in this process) or a
  ``DaskExecutor`` on a new local cluster of ``workers`` single-threaded
  processes or on a running scheduler;
- ``run_tasks(executor, task, items, progress, desc)``: run the tasks with a
  progress bar over blocks, collecting results and failures;
- ``BlockFailures``: raised after a pass in which some blocks failed (the
  others are kept, so a rerun resumes);
- ``blocks_line`` / ``speed_line``: the wording the one-line CLI summaries of
  both commands share.

The layering: ``segmentation.blockwise`` already builds on ``volumes`` (its
stores, done-markers and block grid) and ``volumes`` imports nothing from
``segmentation``, so both may import this module without an upward import.
It needs only tqdm, and ``distributed`` when Dask runs.
"""

import contextlib
import os
import sys


class BlockFailures(RuntimeError):
    """Some blocks raised; the others are written and marked done.

    Attributes:
        summary: the run summary dict (see ``predict_volume`` or
            ``segment_volume``); ``summary["blocks_total"]`` is read.
        failures: list of ``(block_name, exception)``.
    """

    def __init__(self, summary, failures):
        self.summary, self.failures = summary, failures
        name, exc = failures[0]
        super().__init__(
            f"{len(failures)} of {summary['blocks_total']} blocks failed (first: block {name}: "
            f"{type(exc).__name__}: {exc}); finished blocks are kept: rerun the same command "
            f"to resume"
        )


# ------------------------------------------------------------------ executors

class LocalExecutor:
    """Runs tasks one after another in this process (``workers=0``)."""

    name = "local"

    def map_unordered(self, function, items):
        """Yield ``(item, result, exception)`` for each item, in order."""
        for item in items:
            try:
                yield item, function(*item), None
            except Exception as exc:  # noqa: BLE001 - recorded, reported at the end
                yield item, None, exc


class DaskExecutor:
    """Runs tasks on a ``distributed.Client``; results arrive as they finish."""

    def __init__(self, client):
        self.client = client
        self.name = f"dask {client.scheduler.address}"

    def map_unordered(self, function, items):
        """Submit one task per item; yield ``(item, result, exception)`` as they finish."""
        from distributed import as_completed

        futures = {}
        for item in items:
            future = self.client.submit(function, *item, pure=False)
            futures[future] = item
        for future in as_completed(futures):
            item = futures.pop(future)
            exc = future.exception()
            yield item, (None if exc else future.result()), exc
            future.release()


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:
        from fusionnet_tf.volumes.storage import EXTRA_HINT

        raise ImportError(f"Dask execution needs dask[distributed] ({exc}); "
                          f"{EXTRA_HINT}") from exc
    return distributed


@contextlib.contextmanager
def dask_executor(workers=1, scheduler=None):
    """A ``DaskExecutor`` on a new ``LocalCluster`` or a running scheduler.

    Args:
        workers: int >= 1, worker processes of the local cluster (one thread
            each). Ignored when ``scheduler`` is given.
        scheduler: address of a running scheduler (``tcp://host:8786``), or None.

    Yields:
        ``DaskExecutor``. The local cluster is shut down on exit; a remote
        cluster is left running.
    """
    distributed = _import_distributed()
    if scheduler:
        with distributed.Client(scheduler) as client:
            yield DaskExecutor(client)
        return
    import logging

    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        with distributed.Client(cluster) as client:
            client.wait_for_workers(workers)
            yield DaskExecutor(client)


def is_distributed(workers, scheduler):
    """True when the run goes to Dask: a scheduler address or ``workers`` >= 1."""
    return bool(scheduler) or workers > 0


def executor_context(workers, scheduler):
    """The executor context of a run: ``dask_executor`` on Dask, else a ``LocalExecutor``.

    Args:
        workers: int >= 0 (checked by the caller); 0 runs in this process.
        scheduler: address of a running Dask scheduler, or None; overrides
            ``workers``.

    Returns:
        A context manager yielding ``LocalExecutor`` or ``DaskExecutor``.
    """
    if is_distributed(workers, scheduler):
        return dask_executor(workers, scheduler)
    return contextlib.nullcontext(LocalExecutor())


def check_block_hook(block_hook, distributed):
    """Refuse a fault-injection ``block_hook`` for a Dask run (it runs only in-process).

    Raises:
        ValueError: ``block_hook`` is given and ``distributed`` is True.
    """
    if block_hook is not None and distributed:
        raise ValueError("`block_hook` works only in-process (workers=0, no scheduler)")


def worker_name():
    """Address of the Dask worker running this code, or ``"local-<pid>"``."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"local-{os.getpid()}"


# ------------------------------------------------------------------ running tasks

def progress_bar(total, enabled, desc):
    """A tqdm bar over ``total`` blocks labelled ``desc`` on stderr (off unless ``enabled``)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="block", desc=desc, file=sys.stderr,
                disable=not enabled, dynamic_ncols=True)


def run_tasks(executor, task, items, progress, desc):
    """Run ``task`` over ``items`` on ``executor`` with a progress bar over blocks.

    Args:
        executor: ``LocalExecutor`` or ``DaskExecutor``.
        task: function called as ``task(*item)`` (module-level for Dask).
        items: list of argument tuples whose second element is a
            ``geometry.Block``.
        progress: bool, show the bar on stderr.
        desc: the bar's label, e.g. ``"segment-volume: relabel"``.

    Returns:
        ``(results, failures)``: ``(item, result)`` pairs in completion order,
        and ``(block name, exception)`` pairs for the tasks that raised.
    """
    results, failures = [], []
    with progress_bar(len(items), progress, desc) as bar:
        for item, result, exc in executor.map_unordered(task, items):
            bar.update(1)
            if exc is not None:
                failures.append((item[1].name, exc))
            else:
                results.append((item, result))
    return results, failures


def count_block(per_worker, worker):
    """Add one block to ``per_worker`` (``{worker: blocks}``, updated in place)."""
    per_worker[worker] = per_worker.get(worker, 0) + 1


# ------------------------------------------------------------------ summaries

def blocks_line(summary, done_key, done_word):
    """``"N blocks (D <done_word>, S already done) on W worker(s)"`` of a run summary.

    Args:
        summary: dict with ``blocks_total``, ``blocks_skipped``,
            ``blocks_per_worker`` and ``done_key``.
        done_key: the count of blocks this run did, e.g. ``"blocks_computed"``.
        done_word: how the line names them, e.g. ``"computed"``.
    """
    workers = len(summary["blocks_per_worker"])
    return (f"{summary['blocks_total']} blocks ({summary[done_key]} {done_word}, "
            f"{summary['blocks_skipped']} already done) on {workers} worker(s)")


def speed_line(voxels, seconds, voxels_per_s):
    """``"V voxels in S s = R voxels/s"`` (thousands separated, seconds to 0.1)."""
    return f"{voxels:,} voxels in {seconds:.1f} s = {voxels_per_s:,.0f} voxels/s"


__all__ = ["BlockFailures", "LocalExecutor", "DaskExecutor", "dask_executor", "executor_context",
           "is_distributed", "check_block_hook", "worker_name", "progress_bar", "run_tasks",
           "count_block", "blocks_line", "speed_line"]
