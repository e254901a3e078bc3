"""Progress bars for long pass steps: on stderr, shown only when the context asks for progress and stderr is a
terminal (tqdm's ``disable=None``), so logs and tests stay clean."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress(tqdm):
    def __init__(self, iterable, desc: str, show: bool, total: int | None = None):
        super().__init__(iterable, desc=desc, total=total, leave=False, file=sys.stderr, disable=None if show else True)

    def update_to(self, step: int, _best: float = 0.0) -> None:
        """Callback form for searches that report ``(step, best)``."""
        self.update(step + 1 - self.n)
