"""A synthetic 512x512 CT series for benchmarks (noise, not anatomy: only sizes and formats matter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.phantom import Grid, StudyIdentity, write_series


def ct_series(folder: Path, slices: int = 300) -> list[Path]:
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 20, size=(slices, 512, 512)).astype(np.float32)
    grid = Grid((512, 512, slices), (0.7, 0.7, 1.25), np.array([-180.0, -180.0, -200.0]), np.eye(3))
    return write_series(hu, grid, StudyIdentity.from_seed(424242), folder)
