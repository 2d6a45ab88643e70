"""Clean a label mask per label, as the model file says: drop specks, keep the largest parts, fill holes.

A label made of several label-map values (``LabelSpec.values``: overlapping regions such as BraTS's) is
kept as it is: ``LabelSpec`` refuses clean-up options on it when the model is loaded, since cleaning one
region would change the regions that share its values."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from worker.models.spec import LabelSpec

_CONNECTIVITY = ndimage.generate_binary_structure(3, 1)


def clean(labels: np.ndarray, specs: tuple[LabelSpec, ...], voxel_ml: float) -> np.ndarray:
    """Return a cleaned copy of ``labels`` (z, y, x); ``voxel_ml`` is one voxel's volume in mL."""
    out = np.zeros_like(labels)
    for spec in specs:
        if len(spec.mask_values) > 1:
            keep = np.isin(labels, spec.mask_values) & (out == 0)
            out[keep] = labels[keep]
            continue
        (value,) = spec.mask_values
        mask = labels == value
        if not mask.any():
            continue
        if spec.keep_largest or spec.min_volume_ml:
            components, count = ndimage.label(mask, structure=_CONNECTIVITY)
            sizes = np.bincount(components.ravel(), minlength=count + 1)
            sizes[0] = 0
            keep = sizes * voxel_ml >= spec.min_volume_ml
            keep[0] = False
            if spec.keep_largest:
                order = np.argsort(sizes)[::-1][: spec.keep_largest]
                largest = np.zeros_like(keep)
                largest[order] = True
                keep &= largest
            mask = keep[components]
        if spec.fill_holes:
            mask = ndimage.binary_fill_holes(mask)
        out[mask & (out == 0)] = value
    return out
