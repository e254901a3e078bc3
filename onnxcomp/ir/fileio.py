"""Output paths: checks made before any work starts, and atomic writes.

Files onnxcomp writes appear complete or not at all: they are written under their final names into a fresh
staging folder beside the target and then renamed into place (``os.replace`` is atomic on one filesystem),
the main file last. A failed run removes the staging folder and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from onnxcomp.errors import OutputError


def check_output_path(output: str | os.PathLike, *inputs: str | os.PathLike) -> Path:
    """Refuse an output that would overwrite an input or that cannot be written; return it as a Path."""
    out = Path(output)
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp)
        same = out.resolve() == inp.resolve() or (out.exists() and inp.exists() and os.path.samefile(out, inp))
        if same:
            raise OutputError(f"output path {out} is the input model; choose another output path")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable")
    if out.is_dir():
        raise OutputError(f"output path {out} is a folder; give a file name")
    return out


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder beside ``path``; on success its files move beside ``path`` (``path`` itself last).

    Used for a model plus its external data and its reports: a reader never sees a model whose data or
    report is missing. Filesystem errors become :class:`OutputError`.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder))
    except OSError as e:
        raise OutputError(f"cannot write into {folder}: {e.strerror or e}") from None
    try:
        yield stage
        mode = 0o666 & ~_umask()  # mkstemp/mkdtemp are private; outputs get the user's usual mode
        files = sorted(stage.iterdir(), key=lambda f: f.name == path.name)
        for f in files:
            os.chmod(f, mode)
        for f in files:
            os.replace(f, folder / f.name)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
