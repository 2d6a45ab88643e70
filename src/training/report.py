"""What an evaluation shows a reader: an overlay per case (axial and coronal through the label's centre:
the image, the prediction filled in its label colour, the reference as an outline) and a Markdown report
with the table of Dice and volumes, the summary rows and the images; the same figures as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw
from scipy import ndimage

from worker.models.spec import GridModelSpec, ModelSpec

if TYPE_CHECKING:
    from training.evaluate import CaseScore

OUTLINE = np.array([255, 40, 40], dtype=np.float32)  # the reference: red, whatever the label
DISPLAY_MM = 1.0  # overlay pixels per mm


def _oriented(array: np.ndarray, like: sitk.Image) -> np.ndarray:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


def _panel(gray: np.ndarray, predicted: np.ndarray, truth: np.ndarray, spec: ModelSpec,
           size_mm: tuple[float, float]) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    for label in spec.labels:
        mask = predicted == label.value
        rgb[mask] = 0.55 * rgb[mask] + 0.45 * np.array(label.color, dtype=np.float32)
    reference = truth > 0
    rgb[reference & ~ndimage.binary_erosion(reference)] = OUTLINE
    picture = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    height, width = (max(1, int(round(v / DISPLAY_MM))) for v in size_mm)
    return np.asarray(picture.resize((width, height), Image.Resampling.NEAREST))


def overlay_png(image: sitk.Image, predicted: np.ndarray, truth: np.ndarray, spec: ModelSpec, path: Path,
                title: str = "") -> None:
    """Axial and coronal slices through the centre of the reference (else of the prediction), side by side,
    anterior up in the axial and superior up in the coronal, patient's right on the left, to scale."""
    oriented = sitk.DICOMOrient(image, "LPS")
    values = sitk.GetArrayFromImage(oriented).astype(np.float32)
    found, expected = _oriented(predicted, image), _oriented(truth, image)
    where = np.argwhere(expected > 0) if expected.any() else np.argwhere(found > 0)
    k, j, _ = (where.mean(axis=0).round().astype(int) if len(where) else np.array(values.shape) // 2)
    lo, hi = spec.preprocess.window if isinstance(spec, GridModelSpec) else (-1000.0, 400.0)  # else a lung window
    gray = np.clip((values - lo) / (hi - lo), 0, 1) * 255
    sx, sy, sz = oriented.GetSpacing()
    rows, cols = values.shape[1:]
    axial = _panel(gray[k], found[k], expected[k], spec, (rows * sy, cols * sx))
    coronal = _panel(gray[::-1, j], found[::-1, j], expected[::-1, j], spec, (values.shape[0] * sz, cols * sx))
    height = max(axial.shape[0], coronal.shape[0]) + 20
    canvas = np.zeros((height, axial.shape[1] + coronal.shape[1] + 10, 3), dtype=np.uint8)
    canvas[20:20 + axial.shape[0], : axial.shape[1]] = axial
    canvas[20:20 + coronal.shape[0], axial.shape[1] + 10:] = coronal
    picture = Image.fromarray(canvas)
    ImageDraw.Draw(picture).text((4, 4), f"{title}   (filled: prediction, red outline: reference)",
                                 fill=(255, 255, 255))
    picture.save(path)


def _cell(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summary(scores: list[CaseScore], label: str) -> dict[str, float | int | None]:
    """Mean and minimum Dice of a label over the cases that hold it, and the mean absolute volume error."""
    values = [d for s in scores if s.truth_ml[label] > 0 and (d := s.dice[label]) is not None]
    empty = [s.found_ml[label] for s in scores if s.truth_ml[label] == 0]
    errors = [abs(s.error_ml(label)) for s in scores if s.truth_ml[label] > 0]
    return {"cases": len(values), "mean_dice": float(np.mean(values)) if values else None,
            "min_dice": float(np.min(values)) if values else None,
            "mean_abs_error_ml": float(np.mean(errors)) if errors else None,
            "cases_without": len(empty), "max_ml_where_none": float(np.max(empty)) if empty else None}


def write_report(scores: list[CaseScore], spec: ModelSpec, out: Path, title: str, notes: list[str]) -> Path:
    """``report.md`` (table, summary, overlays) and ``report.json`` in ``out``; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    names = [label.name for label in spec.labels]
    lines = [f"# {title}", "", f"Model: {spec.name} {spec.version} ({spec.path})", "", *notes, ""]
    header = ["case", "kind", *(["fold"] if any(s.fold is not None for s in scores) else [])]
    for name in names:
        header += [f"{name} Dice", f"{name} reference mL", f"{name} found mL", f"{name} error mL"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in scores:
        row = [s.name, s.kind, *([str(s.fold)] if "fold" in header else [])]
        for name in names:
            row += [_cell(s.dice[name]), f"{s.truth_ml[name]:.1f}", f"{s.found_ml[name]:.1f}",
                    f"{s.error_ml(name):+.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines += [""]
    summaries = {name: summary(scores, name) for name in names}
    for name, figures in summaries.items():
        lines.append(f"**{name}**: Dice mean {_cell(figures['mean_dice'])}, min {_cell(figures['min_dice'])} over "
                     f"{figures['cases']} cases with the label; mean absolute volume error "
                     f"{_cell(figures['mean_abs_error_ml'], 1)} mL; on {figures['cases_without']} cases without it, "
                     f"at most {_cell(figures['max_ml_where_none'], 1)} mL found.")
    lines += ["", "## Overlays", "", "Filled: the prediction, in the label's colour; red outline: the reference.", ""]
    for s in scores:
        if s.overlay:
            lines += [f"### {s.name}", "", f"![{s.name}]({s.overlay})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "report.json").write_text(json.dumps({"title": title, "model": f"{spec.name} {spec.version}",
                                                 "summary": summaries, "cases": [asdict(s) for s in scores]},
                                                indent=1))
    return path
