"""The commands for people who make models: the demo, ``train``, ``cross-validate`` and ``evaluate``.

Their heavy imports (torch, the training package) happen inside each command, so the node's own commands
never load them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ainode.app import app, console, fail, setup_logging
from db.errors import ConfigurationError

if TYPE_CHECKING:
    from training.inputs import TrainingInputs
    from worker.models.spec import UNetSpec


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


ModelOption = Annotated[Optional[Path], typer.Option(help="Model file (model.toml); the demo model by default")]
ImagesOption = Annotated[Optional[Path], typer.Option(help="Folder of NIfTI images (nnU-Net imagesTr)")]
LabelsOption = Annotated[Optional[Path], typer.Option(help="Folder of NIfTI labels of the same case names (labelsTr)")]
PhantomsOption = Annotated[int, typer.Option(help="Generated phantoms to train on beside the real cases")]
RegionsOption = Annotated[str, typer.Option(help="Phantom fields of view and their shares, name=share,...")]
StepsOption = Annotated[int, typer.Option(help="Optimiser steps")]
BatchOption = Annotated[int, typer.Option(help="Patches per step")]
PatchOption = Annotated[int, typer.Option(help="Edge of the cubic training patch, in model voxels")]
RateOption = Annotated[float, typer.Option(help="Peak learning rate (one-cycle schedule)")]
ShareOption = Annotated[float, typer.Option(help="Share of patches from real cases, when there are phantoms too")]
SeedOption = Annotated[int, typer.Option(help="Seed for phantoms, sampling and initial weights")]
EveryOption = Annotated[int, typer.Option(help="Steps between validations")]
CheckOption = Annotated[int, typer.Option(help="Fresh phantoms to validate on (chest, abdomen, head, pelvis, ...)")]
CacheOption = Annotated[Optional[Path], typer.Option(help="Folder for preprocessed cases (~/.cache/ainode/training)")]
ThreadsOption = Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: all)")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")]
DEFAULT_REGIONS = "chest=0.3,upper-abdomen=0.15,abdomen=0.15,pelvis=0.12,head=0.13,chest-abdomen-pelvis=0.15"


def _spec(model: Optional[Path]) -> UNetSpec:
    from worker.models.spec import load_spec

    try:
        return load_spec(model)
    except ConfigurationError as exc:
        fail(str(exc))


def _inputs(spec: UNetSpec, images: Optional[Path], labels: Optional[Path], phantoms: int, regions: str, seed: int,
            cache: Optional[Path], validation_phantoms: int, threads: Optional[int],
            validation_images: Optional[Path] = None, validation_labels: Optional[Path] = None) -> TrainingInputs:
    """Every case checked before training starts: bad data stops the command with the case named."""
    import torch

    from training.inputs import default_cache, gather, parse_regions
    from training.nifti import DatasetError

    if threads:
        torch.set_num_threads(threads)
    try:
        return gather(spec, images, labels, phantoms, seed, parse_regions(regions), cache or default_cache(),
                      validation_phantoms, validation_images, validation_labels)
    except DatasetError as exc:
        fail(f"training data refused: {exc}")


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Where to write the weights (a checkpoint goes beside them)")],
    model: ModelOption = None,
    images: ImagesOption = None,
    labels: LabelsOption = None,
    phantoms: PhantomsOption = 60,
    regions: RegionsOption = DEFAULT_REGIONS,
    steps: StepsOption = 1500,
    batch: BatchOption = 2,
    patch: PatchOption = 64,
    lr: RateOption = 2e-3,
    real_share: ShareOption = 0.6,
    seed: SeedOption = 0,
    validate_every: EveryOption = 250,
    validation_phantoms: CheckOption = 4,
    validation_images: ImagesOption = None,
    validation_labels: LabelsOption = None,
    cache: CacheOption = None,
    threads: ThreadsOption = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint beside --out")] = False,
    init: Annotated[Optional[Path], typer.Option(help="Start from these weights instead of random ones")] = None,
) -> None:
    """Train a model's network on NIfTI cases (nnU-Net layout) and generated phantoms (DiceFocal loss)."""
    from training.train import TrainingPlan
    from training.train import train as run_training

    spec = _spec(model)
    inputs = _inputs(spec, images, labels, phantoms, regions, seed, cache, validation_phantoms, threads,
                     validation_images, validation_labels)
    plan = TrainingPlan(steps=steps, batch=batch, patch=patch, lr=lr, seed=seed, real_share=real_share,
                        validate_every=validate_every)
    try:
        run_training(spec, out, inputs.real, inputs.phantoms, inputs.validation, plan, resume=resume, init=init,
                     log=console.print)
    except ValueError as exc:
        fail(str(exc))


@app.command("cross-validate")
def cross_validate(
    out: Annotated[Path, typer.Option(help="Folder for the folds' models and reports")],
    images: Annotated[Path, typer.Option(help="Folder of NIfTI images (nnU-Net imagesTr)")],
    labels: Annotated[Path, typer.Option(help="Folder of NIfTI labels of the same case names (labelsTr)")],
    folds: Annotated[int, typer.Option(help="Number of folds")] = 4,
    model: ModelOption = None,
    phantoms: PhantomsOption = 60,
    regions: RegionsOption = DEFAULT_REGIONS,
    steps: StepsOption = 1500,
    batch: BatchOption = 2,
    patch: PatchOption = 64,
    lr: RateOption = 2e-3,
    real_share: ShareOption = 0.6,
    seed: SeedOption = 0,
    validate_every: EveryOption = 250,
    validation_phantoms: CheckOption = 4,
    cache: CacheOption = None,
    threads: ThreadsOption = None,
    device: DeviceOption = "auto",
    init: Annotated[Optional[Path], typer.Option(help="Weights every fold starts from (trained without real cases)")]
        = None,
) -> None:
    """k-fold cross-validation on NIfTI cases: each case scored only by a model that never trained on it."""
    from training.crossval import cross_validate as run_folds
    from training.train import TrainingPlan

    spec = _spec(model)
    inputs = _inputs(spec, images, labels, phantoms, regions, seed, cache, validation_phantoms, threads)
    plan = TrainingPlan(steps=steps, batch=batch, patch=patch, lr=lr, seed=seed, real_share=real_share,
                        validate_every=validate_every)
    try:
        run_folds(spec, inputs.pairs, inputs.real, inputs.phantoms, inputs.validation, out, folds, plan,
                  device=device, init=init, log=console.print)
    except ValueError as exc:
        fail(str(exc))
    console.print(f"report: {out / 'report.md'}")


@app.command()
def evaluate(
    model: ModelOption = None,
    images: ImagesOption = None,
    labels: LabelsOption = None,
    phantoms: Annotated[int, typer.Option(help="Fresh phantoms to score (besides any NIfTI cases)")] = 0,
    regions: Annotated[str, typer.Option(help="Phantom fields of view, cycled through")] =
        "chest,abdomen,pelvis,head,upper-abdomen,chest-abdomen-pelvis",
    seed: Annotated[int, typer.Option(help="Seed of the evaluation phantoms")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Folder for the report and an overlay per case")] = None,
    device: DeviceOption = "auto",
) -> None:
    """Score a model on NIfTI cases and/or fresh phantoms: Dice and volumes per case and label, overlays."""
    from rich.table import Table

    from training.evaluate import evaluate as run_evaluation
    from training.inputs import parse_regions
    from training.nifti import DatasetError, check_cases
    from training.report import summary, write_report

    spec = _spec(model)
    try:
        pairs = check_cases(images, labels, spec) if images and labels else []
        names = list(parse_regions(regions))
    except DatasetError as exc:
        fail(f"evaluation data refused: {exc}")
    if (images is None) != (labels is None) or not (pairs or phantoms):
        fail("give --images and --labels (NIfTI folders), --phantoms N, or both")
    scores = run_evaluation(spec, pairs, phantoms, seed, names, out, device)
    table = Table(title=f"{spec.name} {spec.version}: {len(scores)} cases")
    table.add_column("case")
    for label in spec.labels:
        for column in ("Dice", "reference mL", "found mL"):
            table.add_column(f"{label.name} {column}", justify="right")
    for s in scores:
        cells = []
        for label in spec.labels:
            d = s.dice[label.name]
            cells += ["–" if d is None else f"{d:.3f}", f"{s.truth_ml[label.name]:.1f}",
                      f"{s.found_ml[label.name]:.1f}"]
        table.add_row(s.name, *cells)
    console.print(table)
    for label in spec.labels:
        f = summary(scores, label.name)
        if f["mean_dice"] is not None:
            console.print(f"{label.name}: Dice mean {f['mean_dice']:.3f}, min {f['min_dice']:.3f} over {f['cases']} "
                          f"cases; mean absolute volume error {f['mean_abs_error_ml']:.1f} mL")
        if f["cases_without"]:
            console.print(f"{label.name}: at most {f['max_ml_where_none']:.1f} mL found on {f['cases_without']} "
                          "cases without it")
    if out is not None:
        report = write_report(scores, spec, out, f"Evaluation of {spec.name} {spec.version}",
                              [f"Images: {images}, labels: {labels}" if pairs else "",
                               f"Phantoms: {phantoms} ({regions}), seed {seed}" if phantoms else ""])
        console.print(f"report: {report}")
