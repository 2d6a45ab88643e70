"""What a job found: each label present in the cleaned mask, measured once for the SEG and the SR.

A label is the voxels whose value is one of its ``mask_values`` (usually its own value; BraTS's nested
regions share values, so segments may overlap)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.assembly.volume import Volume
from worker.models.spec import LabelSpec, ModelSpec


@dataclass(frozen=True)
class LabelFinding:
    """A label found in the mask: its segment number in the SEG (1..n in the model's label order), its
    size, and the mean and standard deviation of the image values inside it (HU for CT)."""

    label: LabelSpec
    segment_number: int
    voxels: int
    volume_ml: float
    mean: float
    std: float


@dataclass(frozen=True)
class Findings:
    labels: np.ndarray  # the cleaned mask (z, y, x) on the source grid (an uneven stack's acquired slices)
    present: tuple[LabelFinding, ...]

    @property
    def summary(self) -> str:
        return ", ".join(f"{f.label.name} {f.volume_ml:.1f} mL" for f in self.present) or "nothing found"


def segment_mask(labels: np.ndarray, label: LabelSpec) -> np.ndarray:
    """The voxels of ``labels`` that belong to ``label``."""
    values = label.mask_values
    return labels == values[0] if len(values) == 1 else np.isin(labels, values)


def overlapping(findings: Findings) -> bool:
    """Whether two segments found share a label-map value (then no label map can hold them)."""
    seen: set[int] = set()
    for finding in findings.present:
        values = set(finding.label.mask_values)
        if values & seen:
            return True
        seen |= values
    return False


def find(volume: Volume, labels: np.ndarray, spec: ModelSpec) -> Findings:
    """Measure every label of ``spec`` in ``labels``: one comparison and one pass over the image each.
    Each voxel counts with its own slice's volume (they differ in an unevenly spaced stack)."""
    values = volume.values
    slice_ml = volume.slice_ml
    even = bool(np.all(slice_ml == slice_ml[0]))
    present: list[LabelFinding] = []
    for label in spec.labels:
        mask = segment_mask(labels, label)
        voxels = int(np.count_nonzero(mask))
        if not voxels:
            continue
        inside = values[mask]
        volume_ml = voxels * float(slice_ml[0]) if even else float(mask.sum(axis=(1, 2)) @ slice_ml)
        present.append(LabelFinding(label, len(present) + 1, voxels, volume_ml, float(inside.mean()),
                                    float(inside.std())))
    return Findings(labels, tuple(present))
