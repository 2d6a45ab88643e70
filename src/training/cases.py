"""Training and evaluation cases: generated phantoms as images with their truth, and on the model's grid."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from training.phantom import PhantomCase, make_case
from worker.models.grid import image_from_array, labels_to_model_space, to_model_space
from worker.models.spec import UNetSpec


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )


def case_images(seed: int, matrix: int) -> tuple[PhantomCase, sitk.Image, sitk.Image]:
    case = make_case(seed, matrix=matrix)
    grid = case.grid
    image = image_from_array(case.hu, grid.spacing, grid.origin, grid.direction)
    labels = image_from_array(case.labels, grid.spacing, grid.origin, grid.direction)
    return case, image, labels


def build_training_set(spec: UNetSpec, seeds: list[int], matrix: int) -> list[tuple[np.ndarray, np.ndarray]]:
    cases = []
    with progress() as bar:
        task = bar.add_task("phantoms", total=len(seeds), info="")
        for seed in seeds:
            _, image, labels = case_images(seed, matrix)
            x, grid = to_model_space(image, spec.preprocess)
            y = labels_to_model_space(labels, grid)
            cases.append((x, y))
            bar.update(task, advance=1, info=f"{x.shape}")
    return cases
