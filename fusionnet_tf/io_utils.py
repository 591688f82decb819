"""Small file helpers shared by every writer: nothing is half-written."""

import contextlib
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
    """Fail early unless the folder that will hold output ``path`` exists and is writable.

    Args:
        path: str or Path of the output file or folder.
        what: how the message names it, e.g. ``"--output out.tif"``.

    Raises:
        FileNotFoundError / PermissionError: naming ``what`` and the folder.
    """
    parent = Path(path).absolute().parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{what}: output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{what}: output folder is not writable: {parent}")


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
