"""The one way a scenario draws: matplotlib off-screen, a figure in, a PNG out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: One palette, so a target has the same colour in every plot.
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")


@contextlib.contextmanager
def figure(
    path: Path,
    ncols: int = 1,
    nrows: int = 1,
    *,
    size: tuple[float, float] = (5.4, 5.0),
    title: str | None = None,
    dpi: int = 110,
) -> Iterator[tuple[Any, list[Any]]]:
    """Yield ``(fig, axes)`` (axes always a flat list); on exit lay out, save, close.

    ``size`` is per panel. matplotlib is imported here, not at import time, so a
    scenario that only writes JSON does not need it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows))
    try:
        yield fig, list(np.atleast_1d(axes).ravel())
        if title:
            fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
