"""Widgets remember their last settings: numbers, choices, paths (never layers).

magicgui's own ``persist=True`` pickles every sub-widget's value on each
change, the chosen layer included: pickling a layer copies its data before
failing, which froze the viewer for 5-12 s per change on a 400 MB stack. So
the settings are kept here, as JSON, with magicgui's public widget API: the
values of the named parameters are saved on every change and restored when
the widget is made.

The file is ``napari-<widget>.json`` next to the auto engine's cache
(``$FUSIONNET_TF_CACHE_DIR``, else ``$XDG_CACHE_HOME/fusionnet-tf``, else
``~/.cache/fusionnet-tf``); delete it to get the defaults back.
"""

import json
import os
import tempfile
from pathlib import Path


def settings_path(key):
    """Path of the settings file of the widget ``key`` (e.g. ``"predict"``); may not exist."""
    from fusionnet_tf.inference.autotune import cache_path

    return cache_path().parent / f"napari-{key}.json"


def _plain(value):
    """``value`` as JSON data (a Path as its text); None if it is not a plain setting."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (bool, int, float, str)):
        return value
    return None


def save_settings(widget, names, key):
    """Write the values of ``widget``'s sub-widgets ``names`` to ``settings_path(key)``.

    Written to a temporary file, then renamed; an unwritable folder is
    ignored (remembering is a convenience, not the widget's job).
    """
    values = {name: _plain(getattr(widget, name).value) for name in names}
    path = settings_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(handle, "w") as out:
            json.dump({k: v for k, v in values.items() if v is not None}, out)
        os.replace(temporary, path)
    except OSError:
        pass


def load_settings(widget, names, key):
    """Set ``widget``'s sub-widgets ``names`` to their saved values, where valid.

    A missing or unreadable file, an unknown name, or a value the widget no
    longer accepts (a removed choice, out of range) leaves the default.
    """
    try:
        saved = json.loads(settings_path(key).read_text())
    except (OSError, ValueError):
        return
    if not isinstance(saved, dict):
        return
    for name in names:
        if name in saved:
            try:
                getattr(widget, name).value = saved[name]
            except (ValueError, TypeError, AttributeError):
                pass


def remember_settings(widget, names, key):
    """Restore ``widget``'s saved values of ``names`` now, and save them on every change.

    Args:
        widget: a magicgui ``FunctionGui``.
        names: the parameter names to remember (not layers or the viewer).
        key: str naming the widget in the file name.
    """
    load_settings(widget, names, key)
    widget.changed.connect(lambda *_: save_settings(widget, names, key))
