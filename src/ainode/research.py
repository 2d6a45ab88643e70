"""The commands for people who make models: the demo, training and evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ainode.app import app, console, fail, setup_logging
from db.errors import ConfigurationError


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's data, results and overlay")] = Path("demo-output"),
    seed: Annotated[int, typer.Option(help="Seed of the phantom study")] = 7,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the results")] = 110.0,
) -> None:
    """Send a generated phantom CT to a local node and show what comes back (SEG, SR, Dice, overlay)."""
    from ainode.demo import run_demo

    setup_logging()
    code = run_demo(out, seed=seed, timeout=timeout, console=console)
    raise typer.Exit(code)


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Where to write the weights")],
    model: Annotated[Optional[Path], typer.Option(help="Model file (model.toml); the demo model by default")] = None,
    cases: Annotated[int, typer.Option(help="Number of generated phantoms to train on")] = 48,
    steps: Annotated[int, typer.Option(help="Optimiser steps")] = 1200,
    batch: Annotated[int, typer.Option(help="Patches per step")] = 2,
    patch: Annotated[int, typer.Option(help="Edge of the cubic training patch, in model voxels")] = 80,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle schedule)")] = 2e-3,
    seed: Annotated[int, typer.Option(help="Seed for phantoms, sampling and initial weights")] = 0,
) -> None:
    """Train a model's network on generated chest CT phantoms (DiceFocal loss)."""
    from training.train import train as run_training
    from worker.models.spec import load_spec

    try:
        spec = load_spec(model)
    except ConfigurationError as exc:
        fail(str(exc))
    run_training(spec, out, cases=cases, steps=steps, batch=batch, patch=(patch, patch, patch), lr=lr,
                 seed=seed, log=console.print)


@app.command()
def evaluate(
    model: Annotated[Optional[Path], typer.Option(help="Model file (model.toml); the demo model by default")] = None,
    cases: Annotated[int, typer.Option(help="Number of fresh phantoms")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the evaluation phantoms")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
) -> None:
    """Print per-label Dice of the model against the truth of freshly generated phantoms."""
    from rich.table import Table

    from training.evaluate import evaluate as run_evaluation
    from worker.models.spec import load_spec

    try:
        spec = load_spec(model)
    except ConfigurationError as exc:
        fail(str(exc))
    scores = run_evaluation(spec, cases=cases, seed=seed, device=device)
    table = Table(title=f"{spec.name} {spec.version}: Dice on {cases} fresh phantoms")
    table.add_column("label")
    table.add_column("mean", justify="right")
    table.add_column("min", justify="right")
    table.add_column("per case")
    for name, values in scores.items():
        table.add_row(name, f"{sum(values) / len(values):.3f}", f"{min(values):.3f}",
                      " ".join(f"{v:.3f}" for v in values))
    console.print(table)


