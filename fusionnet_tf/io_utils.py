"""Small file helpers shared by every writer: nothing is half-written."""

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    Use it for every output file: if the writer raises, the temporary file is
    removed and ``path`` is left as it was.

    Args:
        path: str or Path of the final file. Its parent folder must exist.

    Yields:
        Path of a temporary file in the same folder, with the same suffix (so
        writers that look at the extension behave the same).

    Raises:
        FileNotFoundError: if the parent folder does not exist.
        PermissionError: if the folder cannot be written.

    Example:
    >>> with atomic_path("out.tif") as tmp:
    ...     tifffile.imwrite(tmp, array)
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {parent} (for {path})")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output folder is not writable: {parent} (for {path})")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes) or ".tmp",
                               dir=parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        default_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def default_permissions(path, directory=False):
    """Give a finished temporary file or folder the mode a plain ``open()`` gives.

    ``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 entries; outputs should
    follow the user's umask like any other file.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)
