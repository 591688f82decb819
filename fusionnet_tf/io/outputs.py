"""File helpers shared by every writer: nothing is half-written, nothing of the user's is lost.

The output guard (:func:`check_output_path`) is the one place that decides
whether an output path may be written; every writer (TIFF, HDF5, PNG, PNG
folder, zarr store) and every command (before any work) calls it. The rules:

- the folder that will hold the output must exist and accept a new file
  (probed by creating and removing an empty temporary file, so a read-only
  mount or ``/proc`` is caught even for root);
- a symbolic-link loop is refused with one line;
- a file output (TIFF, HDF5, PNG) never replaces a folder;
- a folder output (PNG folder, zarr store) replaces an existing folder only
  when it is empty or an earlier output of the same kind
  (``earlier_output(path)`` says so, e.g. a folder holding only
  ``slice_NNNN.png`` files, or a zarr store carrying this command's
  attributes). Anything else of the user's is refused, never deleted.

:func:`check_not_input` refuses an output that would overwrite or live
inside an input (a file, an HDF5 dataset, a zarr store, a folder).
:func:`atomic_path` and :func:`replace_folder` make every write atomic.
Specs are split by ``io.spec.parse_spec``; the writers that use these guards
are in ``io.files``.
"""

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path, copy_existing=False, fsync=False):
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    Use it for every output file: if the writer raises, the temporary file is
    removed and ``path`` is left as it was.

    Args:
        path: str or Path of the final file. Its parent folder must exist.
        copy_existing: bool. If ``path`` exists, the temporary file starts as
            a copy of it and keeps its permissions, so a writer can update a
            container (e.g. add a dataset to an HDF5 file) without anyone ever
            seeing a half-updated file. A symbolic link is followed (its
            target is updated) and a read-only file is refused. Changes others
            make to ``path`` while the writer runs are lost. Defaults to False
            (start empty).
        fsync: bool. Flush the temporary file and the folder to disk around
            the rename, so a crash leaves either the old or the new file.
            Defaults to False.

    Yields:
        Path of a temporary file in the same folder, with the same suffix (so
        writers that look at the extension behave the same).

    Raises:
        FileNotFoundError: if the parent folder does not exist.
        PermissionError: if the folder (or, with ``copy_existing``, the
            existing file) cannot be written.

    Example:
    >>> with atomic_path("out.tif") as tmp:
    ...     tifffile.imwrite(tmp, array)
    """
    path = Path(os.path.realpath(path)) if copy_existing else Path(path)
    if copy_existing and path.is_file() and not os.access(path, os.W_OK):
        raise PermissionError(f"output file is not writable: {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {parent} (for {path})")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder is not writable: {parent} (for {path})")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes) or ".tmp",
                               dir=parent)
    os.close(fd)
    tmp = Path(tmp)
    existing = copy_existing and path.is_file()
    try:
        if existing:
            shutil.copyfile(path, tmp)
        yield tmp
        if existing:
            shutil.copymode(path, tmp)
        else:
            default_permissions(tmp)
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync(parent, directory=True)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_output_folder(path, what):
    """Fail early unless the folder that will hold output ``path`` exists and accepts new files.

    Args:
        path: str or Path of the output file or folder.
        what: how the message names it, e.g. ``"--output out.tif"``.

    Raises:
        FileNotFoundError / PermissionError: naming ``what`` and the folder.
        ValueError: a symbolic-link loop in ``path`` or its folder.
    """
    check_no_symlink_loop(path, what)
    parent = Path(os.path.abspath(path)).parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{what}: output folder does not exist: {parent}")
    try:  # os.access says yes to root on read-only mounts and /proc: try it
        fd, probe = tempfile.mkstemp(prefix=".fusionnet-write-test.", dir=parent)
    except OSError as error:
        raise PermissionError(f"{what}: cannot write into the output folder {parent} "
                              f"({error.strerror or error})") from None
    os.close(fd)
    os.unlink(probe)


def check_no_symlink_loop(path, what):
    """Raise ValueError naming ``what`` if ``path`` (or a folder on its way) is a symlink loop."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(f"{what}: symbolic link loop at {path}") from None


def check_output_path(path, what, folder_output=False, earlier_output=None):
    """The output guard: fail unless output ``path`` may be written (see the module docstring).

    Args:
        path: str or Path of the output file or folder (an HDF5 file without
            its ``:/key``).
        what: how messages name it, e.g. ``"--output out.tif"`` (the flag and
            the value the user typed).
        folder_output: bool. The output is a folder (PNG folder, zarr store)
            that replaces ``path`` as a whole. Defaults to False (a file).
        earlier_output: callable ``Path -> bool`` for folder outputs: True if
            the existing folder is an earlier output of the same kind, which
            may be replaced. None: only a missing or empty folder may be used.

    Raises:
        IsADirectoryError: a file output naming an existing folder.
        FileExistsError: a folder output over a file or over a folder that is
            neither empty nor an earlier output.
        FileNotFoundError / PermissionError / ValueError: see
            :func:`check_output_folder`.
    """
    check_output_folder(path, what)
    path = Path(path)
    if not folder_output:
        if path.is_dir():
            raise IsADirectoryError(f"{what}: is an existing folder, expected a file")
        return
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise FileExistsError(f"{what}: {path} exists and is not a folder this command wrote; "
                              f"remove it or choose another path")
    if any(path.iterdir()) and not (earlier_output is not None and earlier_output(path)):
        raise FileExistsError(f"{what}: folder {path} exists and holds files this command did "
                              f"not write; it is never replaced: remove it or choose another "
                              f"path")


def zarr_attributes(path):
    """The root attributes of the zarr store at ``path`` (format 2 or 3), or ``{}``.

    Reads the metadata JSON directly (no zarr import): ``zarr.json``'s
    ``"attributes"`` or ``.zattrs``. ``{}`` for anything that is not a
    readable zarr store.
    """
    path = Path(path)
    for name, pick in (("zarr.json", lambda meta: meta.get("attributes")),
                       (".zattrs", lambda meta: meta)):
        try:
            meta = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        attributes = pick(meta) if isinstance(meta, dict) else None
        if isinstance(attributes, dict):
            return attributes
    return {}


@contextlib.contextmanager
def staged_folder(folder, suffix=""):
    """Write a folder output in a temporary sibling, then move it to ``folder``.

    Yields the temporary folder (``Path``). When the block ends normally it
    gets default permissions and replaces ``folder`` (:func:`replace_folder`);
    on an error it is removed and ``folder`` is left as it was. Call
    :func:`check_output_path` first.
    """
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{suffix}", dir=folder.absolute().parent))
    try:
        yield tmp
        default_permissions(tmp, directory=True)
        replace_folder(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(new, folder):
    """Move the finished folder ``new`` to ``folder``, removing what ``folder`` held.

    The old folder is first renamed aside (into a temporary folder next to
    it), so ``folder`` always names either the old or the new output; call
    :func:`check_output_path` before writing ``new``.
    """
    folder = Path(folder)
    aside = None
    try:
        if folder.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.",
                                          dir=folder.absolute().parent))
            os.replace(folder, aside / "old")
        os.replace(new, folder)
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def hdf5_key(key):
    """Canonical form of an HDF5 key: ``"/a//b/"`` and ``"a/b"`` -> ``"a/b"``."""
    return "/".join(part for part in str(key).split("/") if part)


def same_path(first, second):
    """True if two paths name the same file or folder (existing or not)."""
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return os.path.realpath(first) == os.path.realpath(second)


def _contains(folder, path):
    """True if ``path`` lies inside the existing folder ``folder`` (a folder, a zarr store)."""
    if not folder.is_dir():
        return False
    folder, path = os.path.realpath(folder), os.path.realpath(path)
    return path != folder and path.startswith(folder.rstrip(os.sep) + os.sep)


def stored_in(spec):
    """``(path, hdf5_key_or_None, kind)`` of the file or store that holds ``spec``.

    ``kind`` is ``"hdf5"`` for ``file.h5[:/key]``, ``"zarr"`` for a zarr or
    N5 container (``store.zarr[:key]``, ``store.zarr/key``; the path is the
    store's folder) and ``"file"`` otherwise (also for a spec that
    ``io.spec.parse_spec`` refuses, such as ``edges.npz``). Specs are split by
    ``parse_spec``.
    """
    from fusionnet_tf.io.spec import FOLDER_CONTAINERS, parse_spec

    try:
        parsed = parse_spec(spec)
    except ValueError:
        return Path(str(spec)), None, "file"
    if parsed.kind == "hdf5":
        return parsed.path, parsed.key, "hdf5"
    return parsed.path, None, "zarr" if parsed.kind in FOLDER_CONTAINERS else "file"


def check_not_input(output, input_spec, output_name="--output", input_name="INPUT",
                    default_key="prediction"):
    """Refuse an output that would overwrite an input, before any work (the one such guard).

    An output over the input's file, over the zarr store that holds it, over
    a folder that contains it or inside the input's folder or store is
    refused. Only an HDF5 output into the HDF5 file that holds the input is
    allowed (the writers keep the file's other datasets), unless it names the
    input dataset itself (or a link to it).

    Args:
        output: the output spec (the thing checked, first as in every guard here).
        input_spec: the input spec (``file.tif``, ``file.h5:/key``,
            ``store.zarr:/key``, a folder, ...).
        output_name, input_name: how the error message calls them (the option).
        default_key: the HDF5 key the output is written to when it names none.

    Raises:
        ValueError: one line naming both (also for a symbolic-link loop).
    """
    from fusionnet_tf.io.files import resolve_hdf5_key

    input_path, input_key, input_kind = stored_in(input_spec)
    output_path, output_key, output_kind = stored_in(output)
    check_no_symlink_loop(input_path, f"{input_name} {input_spec}")
    check_no_symlink_loop(output_path, f"{output_name} {output}")
    inside = _contains(output_path, input_path) or _contains(input_path, output_path)
    if not (same_path(input_path, output_path) or inside):
        return
    if inside or input_kind != "hdf5" or output_kind != "hdf5":
        raise ValueError(f"{output_name} {output} would overwrite {input_name} {input_spec}; "
                         f"choose another output path")
    output_key = hdf5_key(output_key or default_key)
    input_key = resolve_hdf5_key(input_path, input_key) if input_path.exists() else None
    if input_key is not None and (hdf5_key(input_key) == output_key
                                  or _same_hdf5_object(input_path, input_key, output_key)):
        raise ValueError(f"{output_name} {output} is the {input_name} dataset ({input_spec}); "
                         f"write to another key, e.g. {output_path}:/{output_key}_out")


def _same_hdf5_object(path, key, other):
    """True if ``key`` and ``other`` of HDF5 file ``path`` are one object (e.g. via a link)."""
    import h5py

    with h5py.File(path, "r") as handle:
        first, second = handle.get(key), handle.get(other)
        return first is not None and second is not None and first == second


def _fsync(path, directory=False):
    """Flush a file (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot fsync a folder; a file must
            raise
    finally:
        os.close(fd)


def default_permissions(path, directory=False):
    """Give a finished temporary file or folder the mode a plain ``open()`` gives.

    ``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 entries; outputs should
    follow the user's umask like any other file.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def check_hdf5_target(path, key):
    """Fail early if dataset ``key`` cannot be written into the HDF5 file ``path``.

    A missing file is fine (it will be created), and so is an existing dataset
    ``key`` (it will be replaced). Only reads ``path``.

    Raises:
        ValueError: ``path`` exists but is not an HDF5 file; ``key`` is empty,
            names a group, or lies below a dataset.
    """
    path = Path(path)
    if not hdf5_key(key):
        raise ValueError(f"{path}:{key}: empty HDF5 dataset key; give one, e.g. "
                         f"{path}:/prediction")
    if not path.is_file():
        return
    import h5py

    if not os.access(path, os.R_OK | os.W_OK):
        raise PermissionError(f"{path}: the existing HDF5 file cannot be read and written; "
                              f"the prediction is added to it as a new dataset")
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path} exists and is not an HDF5 file; remove it or choose another "
                         f"output")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: cannot open the existing HDF5 file ({error})") from error
    with handle:
        check_hdf5_key(handle, path, key)


def check_hdf5_key(handle, path, key):
    """Raise ValueError unless a dataset can be stored as ``key`` in the open file."""
    import h5py

    name = hdf5_key(key)
    parts = name.split("/")
    for depth in range(1, len(parts)):
        parent = handle.get("/".join(parts[:depth]))
        if parent is None:
            break
        if not isinstance(parent, h5py.Group):
            raise ValueError(
                f"{path}:/{name}: '{'/'.join(parts[:depth])}' is a dataset, not a group; "
                f"choose another key"
            )
    existing = handle.get(name)
    if existing is not None and not isinstance(existing, h5py.Dataset):
        raise ValueError(
            f"{path}:/{name} is a group in the existing file (holding "
            f"{', '.join(existing) or 'nothing'}); give a dataset key, e.g. "
            f"{path}:/{name}/prediction"
        )
