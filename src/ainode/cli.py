"""The ``ainode`` command: wires configuration, the DICOM node, the worker and the database together."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from db.errors import ConfigurationError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="TOML configuration file (see config/ainode.toml)")
]


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


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
    from worker.modelspec import load_spec
    from worker.training import train as run_training

    try:
        spec = load_spec(model)
    except ConfigurationError as exc:
        _fail(str(exc))
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

    from worker.modelspec import load_spec
    from worker.training import evaluate as run_evaluation

    try:
        spec = load_spec(model)
    except ConfigurationError as exc:
        _fail(str(exc))
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


def main() -> None:
    app(prog_name="ainode")


if __name__ == "__main__":
    sys.exit(main())
