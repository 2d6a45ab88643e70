"""Train a model's network on generated phantoms (``ainode train``).

Cases go through the same preprocessing as inference does (``worker.models.grid``), so the model sees in
training exactly the kind of input it gets at run time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceFocalLoss

from training.cases import build_training_set, progress
from worker.models.spec import UNetSpec
from worker.models.unet import build_network


def _crop(x: np.ndarray, y: np.ndarray, size: tuple[int, int, int], rng: np.random.Generator,
          focus: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A training patch; some reach past the volume's edge, padded by replication as inference pads."""
    reach = [int(rng.integers(0, s // 4)) if rng.random() < 0.25 else 0 for s in size]
    pad = [(r, r + max(0, s - d)) for r, s, d in zip(reach, size, x.shape)]
    if any(a or b for a, b in pad):
        x = np.pad(x, pad, mode="edge")
        y = np.pad(y, pad, mode="edge")
    if focus is not None and (y == focus).any():
        points = np.argwhere(y == focus)
        centre = points[rng.integers(len(points))]
        start = [int(np.clip(c - s // 2 + rng.integers(-s // 4, s // 4 + 1), 0, d - s))
                 for c, s, d in zip(centre, size, x.shape)]
    else:
        start = [int(rng.integers(0, d - s + 1)) for s, d in zip(size, x.shape)]
    sl = tuple(slice(a, a + s) for a, s in zip(start, size))
    return x[sl], y[sl]


@dataclass
class TrainingReport:
    steps: int
    seconds: float
    final_loss: float


def train(spec: UNetSpec, out: Path, cases: int = 40, steps: int = 800, batch: int = 2,
          patch: tuple[int, int, int] = (80, 80, 80), lr: float = 2e-3, seed: int = 0,
          matrix: int = 192, threads: int | None = None,
          log: Callable[[str], None] = print) -> TrainingReport:
    """Train ``spec``'s network from scratch on ``cases`` phantoms and write its weights to ``out``."""
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    data = build_training_set(spec, list(range(seed * 10_000, seed * 10_000 + cases)), matrix)
    network = build_network(spec)
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = DiceFocalLoss(to_onehot_y=True, softmax=True, include_background=False, lambda_focal=1.0)
    lesion = max(label.value for label in spec.labels)
    start = time.monotonic()
    running = 0.0
    network.train()
    with progress() as bar:
        task = bar.add_task("training", total=steps, info="")
        for step in range(steps):
            xs, ys = [], []
            for b in range(batch):
                x, y = data[int(rng.integers(len(data)))]
                x, y = _crop(x, y, patch, rng, focus=lesion if (step + b) % 2 == 0 else None)
                x = x * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
                xs.append(x)
                ys.append(y)
            xt = torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))
            yt = torch.from_numpy(np.stack(ys)[:, None].astype(np.int64))
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(network(xt), yt)
            loss.backward()
            optimiser.step()
            schedule.step()
            value = loss.item()
            running = 0.95 * running + 0.05 * value if step else value
            bar.update(task, advance=1, info=f"loss {running:.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    torch.save(state, out)
    report = TrainingReport(steps, time.monotonic() - start, running)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) after {steps} steps in {report.seconds:.0f} s")
    return report
