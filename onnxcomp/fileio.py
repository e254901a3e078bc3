"""Output paths: checks made before any work starts, and atomic writes.

A file onnxcomp writes appears complete or not at all: it is written under a temporary name in the target
folder and renamed into place (``os.replace`` is atomic on one filesystem). A failed run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
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
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure remove it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the user's usual mode
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path`` whose files are moved next to ``path`` on success.

    Used for a model plus its external-data file: both are written into the folder under their final names,
    then moved (data first, model last) so that a reader never sees a model whose data is missing.
    """
    path = Path(path)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmpdir", dir=path.parent or "."))
    try:
        yield tmp_dir
        main = tmp_dir / path.name
        for f in sorted(tmp_dir.iterdir(), key=lambda p: p == main):
            os.replace(f, path.parent / f.name)
    finally:
        for f in tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                f.unlink()
        with contextlib.suppress(OSError):
            tmp_dir.rmdir()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
