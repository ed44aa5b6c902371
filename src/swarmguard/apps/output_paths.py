"""Checks on the command line's output paths, run before any work starts.

A run of ``simulate`` or ``validate`` can take minutes; finding only at the
end that ``--out`` names a file, or that ``--json``'s folder does not exist,
wastes the run and ends in a traceback. These checks find such paths first
and raise :class:`~swarmguard.errors.OutputPathError` with a one-line reason.

Writability is tested by creating (and at once removing) a probe file in the
folder that will hold the output, because permission bits do not tell the
whole story (``root`` passes every ``os.access`` test, a read-only mount
fails every write).

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> check_output_file(d / "scores.csv", "--output") == (d / "scores.csv")
True
>>> check_output_file(d / "missing" / "scores.csv", "--output")
Traceback (most recent call last):
...
swarmguard.errors.OutputPathError: --output ...: the folder ... does not exist
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import OutputPathError

__all__ = ["check_output_file", "check_output_folder", "check_not_input"]


def _probe(folder: Path, option: str, path: Path) -> None:
    """Create and remove a file in ``folder``; OutputPathError when that is refused."""
    try:
        fd, name = tempfile.mkstemp(prefix=".swarmguard-probe-", dir=folder)
    except OSError as exc:
        raise OutputPathError(f"{option} {path}: cannot write in the folder {folder}: "
                              f"{exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(name)


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a :class:`Path` if a file can be written there, else :class:`OutputPathError`.

    Refused: an existing folder, an existing file that is not a regular file
    or not writable, a parent folder that is missing, is not a folder, or
    cannot be written in.
    """
    p = Path(path)
    if p.name in ("", ".", ".."):
        raise OutputPathError(f"{option} {p}: names a folder, not a file")
    if p.is_dir():
        raise OutputPathError(f"{option} {p}: is a folder, not a file")
    if p.exists() and not p.is_file():
        raise OutputPathError(f"{option} {p}: exists and is not a regular file")
    parent = p.parent
    if not parent.exists():
        raise OutputPathError(f"{option} {p}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputPathError(f"{option} {p}: {parent} is not a folder")
    _probe(parent, option, p)
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputPathError(f"{option} {p}: the existing file is not writable")
    return p


def check_output_folder(path: str | os.PathLike, option: str, files: Iterable[str] = ()) -> Path:
    """``path`` as a :class:`Path` if it is, or can be made, a writable folder; else :class:`OutputPathError`.

    A missing folder is fine (it is created later, with its parents) when its
    nearest existing ancestor is a writable folder. ``files`` are names that
    will be written inside it: each must not be an existing folder.
    """
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise OutputPathError(f"{option} {p}: is a file, not a folder")
        for name in files:
            if (p / name).is_dir():
                raise OutputPathError(f"{option} {p}: {p / name} is a folder, where the file {name} goes")
        _probe(p, option, p)
        return p
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"{option} {p}: {ancestor} is a file, so the folder cannot be made")
    _probe(ancestor, option, p)
    return p


def check_not_input(output: str | os.PathLike, input: str | os.PathLike, option: str) -> None:
    """:class:`OutputPathError` when ``output`` is the input file under any spelling (links, ``..``, hard links)."""
    out, src = Path(output), Path(input)
    same = out.resolve() == src.resolve()
    if not same and out.exists() and src.exists():
        try:
            same = os.path.samefile(out, src)
        except OSError:       # pragma: no cover - both exist; samefile only stats them
            same = False
    if same:
        raise OutputPathError(f"{option} {out}: is the input file {src}; write the scores elsewhere")
