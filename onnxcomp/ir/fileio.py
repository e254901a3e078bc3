"""Output paths: checks made before any work starts, and atomic writes.

Files onnxcomp writes appear complete or not at all: they are written under their final names into a fresh
staging folder beside the target and then renamed into place (``os.replace`` is atomic on one filesystem),
the main file last. A failed run removes the staging folder and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from onnxcomp.errors import OutputError


def check_output_path(output: str | os.PathLike, *inputs: str | os.PathLike) -> Path:
    """Refuse an output that would overwrite an input or that cannot be written; return it as a Path."""
    if not isinstance(output, (str, os.PathLike)):
        raise OutputError(f"the output path must be a string or a path, not a {type(output).__name__}")
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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same resolved path, or (both existing) the same inode (a hard link)."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:  # an unresolvable path (too long, a loop) is no file the run reads
        return False


def check_writes(writes: Iterable[str | os.PathLike], reads: Iterable[tuple[str | os.PathLike, str]]) -> None:
    """Refuse a run that would write (model, external data, reports) onto a file it reads; ``reads`` pairs each
    read file with what it is ("the input model", "the calibration data", ...)."""
    reads = list(reads)
    for out in writes:
        for path, what in reads:
            if same_file(out, path):
                raise OutputError(f"writing {out} would replace {what} ({path}); choose another output path")


def exists(path: str | os.PathLike) -> bool:
    """``Path.exists`` that answers False where the OS refuses the name (too long, invalid) instead of raising."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder beside ``path``; on success its files move beside ``path`` (``path`` itself last).

    Used for a model plus its external data and its reports: a reader never sees a model whose data or
    report is missing. Filesystem errors become :class:`OutputError`.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    _remove_stale_stages(folder, path.name)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=folder))
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


def _remove_stale_stages(folder: Path, name: str) -> None:
    """Remove staging folders for ``name`` left by runs that were killed (SIGKILL skips ``finally``): the creating
    process id is part of the folder's name, and a folder whose process no longer exists is stale."""
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)\.[^/]*\.tmp")
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and entry.is_dir() and not _alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or a number we cannot ask about: leave its folder alone
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
