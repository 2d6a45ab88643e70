"""Train a model's network (``ainode train``): real NIfTI cases and generated phantoms, on the model's grid.

Cases go through the same preprocessing as inference does (``worker.models.grid``), so the model sees in
training exactly the kind of input it gets at run time. Each step draws augmented patches (real cases and
phantoms in a set proportion) and takes one AdamW step on the DiceFocal loss; the progress bar shows the
running loss and the validation Dice, measured every few hundred steps by sliding-window inference on the
validation cases. A checkpoint (weights, optimiser, schedule, random states) is written as training goes,
so ``--resume`` continues an interrupted run exactly where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceFocalLoss

from db.storage import write_atomic
from training.augment import Augmentation, sample_patch
from training.cases import PreparedCase, progress
from training.metrics import dice
from worker.models.export import model_file
from worker.models.spec import UNetSpec
from worker.models.unet import build_network


@dataclass(frozen=True)
class TrainingPlan:
    steps: int = 1500
    batch: int = 2
    patch: int = 64
    lr: float = 2e-3
    seed: int = 0
    real_share: float = 0.6  # of the patches, when there are both real cases and phantoms
    validate_every: int = 250
    checkpoint_every: int = 50


@dataclass
class TrainingReport:
    steps: int
    seconds: float
    final_loss: float
    validation: dict[str, float]


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".checkpoint")


def _probabilities(network: torch.nn.Module, spec: UNetSpec, image: np.ndarray) -> np.ndarray:
    inf = spec.inference
    tensor = torch.from_numpy(image.astype(np.float32))
    tensor = tensor[None, None] if tensor.ndim == 3 else tensor[None]
    with torch.inference_mode():
        logits = sliding_window_inference(tensor, roi_size=inf.roi_size, sw_batch_size=inf.sw_batch_size,
                                          predictor=network, overlap=inf.overlap, mode=inf.mode,
                                          padding_mode=inf.padding_mode)
        assert isinstance(logits, torch.Tensor)
        return torch.softmax(logits, dim=1)[0].numpy()


def validate(network: torch.nn.Module, spec: UNetSpec, cases: list[PreparedCase]) -> dict[str, float]:
    """Mean Dice per label on the cases that hold it, and the mL of each label found on the cases that
    hold none (on the model grid, without post-processing: a quick figure while training)."""
    network.eval()
    voxel_ml = float(np.prod(spec.preprocess.spacing)) / 1000.0
    scores: dict[str, list[float]] = {}
    for case in cases:
        predicted = np.argmax(_probabilities(network, spec, case.image), axis=0)
        for label in spec.labels:
            truth = case.labels == label.value
            if truth.any():
                scores.setdefault(f"{label.name} Dice", []).append(dice(predicted == label.value, truth))
            else:
                scores.setdefault(f"{label.name} mL where none", []).append(
                    float((predicted == label.value).sum()) * voxel_ml)
    network.train()
    return {name: float(np.mean(values)) for name, values in scores.items()}


def _draw(real: list[PreparedCase], phantoms: list[PreparedCase], share: float,
          rng: np.random.Generator) -> PreparedCase:
    pool = real if real and (not phantoms or rng.random() < share) else phantoms
    return pool[int(rng.integers(len(pool)))]


def _rng_state(rng: np.random.Generator) -> dict[str, object]:
    return {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}


def train(spec: UNetSpec, out: Path, real: list[PreparedCase], phantoms: list[PreparedCase],
          validation: list[PreparedCase], plan: TrainingPlan = TrainingPlan(),
          augmentation: Augmentation = Augmentation(), resume: bool = False, init: Path | None = None,
          log: Callable[[str], None] = print) -> TrainingReport:
    """Train ``spec``'s network on the cases and write its weights (a ``state_dict``) to ``out``."""
    if not real and not phantoms:
        raise ValueError("nothing to train on: no real cases and no phantoms")
    torch.manual_seed(plan.seed)
    rng = np.random.default_rng(plan.seed)
    network = build_network(spec)
    if init is not None:
        network.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    optimiser = torch.optim.AdamW(network.parameters(), lr=plan.lr, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=plan.lr, total_steps=plan.steps, pct_start=0.1)
    loss_fn = DiceFocalLoss(to_onehot_y=True, softmax=True, include_background=False, batch=True, gamma=2.0)
    names = sorted(c.name for c in real + phantoms)
    start_step, running, scores = 0, 0.0, {}
    saved = checkpoint_path(out)
    if resume and saved.exists():
        state = torch.load(saved, map_location="cpu", weights_only=False)
        if state["plan"] != asdict(plan) or state["cases"] != names:
            raise ValueError(f"checkpoint {saved} was made with another plan or other cases; start again without "
                             f"--resume (its plan: {json.dumps(state['plan'])})")
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        start_step, running, scores = state["step"], state["running"], state["validation"]
        log(f"resuming {saved} at step {start_step} of {plan.steps}")
    began = time.monotonic()
    network.train()

    def info() -> str:
        shown = ", ".join(f"{k} {v:.3f}" if "Dice" in k else f"{k} {v:.0f}" for k, v in scores.items())
        return f"loss {running:.3f}" + (f"; validation: {shown}" if shown else "")

    with progress() as bar:
        task = bar.add_task("training", total=plan.steps, completed=start_step, info=info())
        for step in range(start_step, plan.steps):
            pairs = [sample_patch(_draw(real, phantoms, plan.real_share, rng), plan.patch, rng, augmentation)
                     for _ in range(plan.batch)]
            x = np.stack([p[0] for p in pairs])
            xt = torch.from_numpy(x if x.ndim == 5 else x[:, None])
            yt = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None].astype(np.int64))
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(network(xt), yt)
            loss.backward()
            optimiser.step()
            schedule.step()
            running = 0.95 * running + 0.05 * loss.item() if step else loss.item()
            done = step + 1
            if validation and (done % plan.validate_every == 0 or done == plan.steps):
                scores = validate(network, spec, validation)
                log(f"step {done}: {info()}")
            if done % plan.checkpoint_every == 0 or done == plan.steps:
                _save_checkpoint(saved, network, optimiser, schedule, rng, plan, names, done, running, scores)
                if not bar.console.is_terminal:  # a log file gets a line where a terminal gets the bar
                    log(f"step {done} of {plan.steps}, {time.monotonic() - began:.0f} s: {info()}")
            bar.update(task, advance=1, info=info())
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in network.state_dict().items()}, out)
    report = TrainingReport(plan.steps, time.monotonic() - began, running, scores)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) after {plan.steps} steps; this run took "
        f"{report.seconds:.0f} s for steps {start_step + 1}–{plan.steps}")
    described = write_model_file(spec, out)
    if described is not None:
        log(f"wrote {described}, the model file of these weights")
    return report


def write_model_file(spec: UNetSpec, out: Path) -> Path | None:
    """``model.toml`` beside the weights: the model trained (channels, normalisation, grid, labels) with
    these weights, ready for ``[models.NAME] kind = "ainode"``. The model file trained from is never
    overwritten (when it is that file, it is left as it is)."""
    path = out.parent / "model.toml"
    if path.resolve() == spec.path.resolve():
        return None
    write_atomic(path, model_file(spec, out.name, f"Written by `ainode train` from {str(spec.path)!r}.").encode())
    return path


def _save_checkpoint(path: Path, network: torch.nn.Module, optimiser: torch.optim.Optimizer,
                     schedule: torch.optim.lr_scheduler.LRScheduler, rng: np.random.Generator, plan: TrainingPlan,
                     names: list[str], step: int, running: float, scores: dict[str, float]) -> None:
    """Written durably (``write_atomic``), so a run killed while saving keeps its previous checkpoint."""
    state = {"network": network.state_dict(), "optimiser": optimiser.state_dict(),
             "schedule": schedule.state_dict(), "rng": _rng_state(rng), "plan": asdict(plan), "cases": names,
             "step": step, "running": running, "validation": scores}
    write_atomic(path, lambda fh: torch.save(state, fh))
