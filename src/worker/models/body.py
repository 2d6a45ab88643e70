"""The patient's body on the model grid: a label that lies inside the patient (``inside_body`` in
``model.toml``) is not called in the air around them, on the table or in its foam.

The body is the largest connected part of what is denser than -500 HU, after an opening that cuts the
thin bridges where the patient touches the table, with every hole filled slice by slice along the grid's
first axis (axial on an LPS grid): the lungs are holes in the chest, but they reach the air outside through
the airway in 3D, so a 3D fill would leave them out. A margin of one voxel keeps the lungs' pleural edge.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from worker.models.spec import GridModelSpec

BODY_HU = -500.0
_BALL = ndimage.generate_binary_structure(3, 1)


def body_mask(model_input: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """The body (z, y, x bool) in a windowed, [0, 1]-scaled model input."""
    lo, hi = window
    tissue = model_input > (BODY_HU - lo) / (hi - lo)
    opened = ndimage.binary_opening(tissue, structure=_BALL, iterations=2)
    components, count = ndimage.label(opened)
    if count == 0:
        return np.zeros(model_input.shape, bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = ndimage.binary_dilation(components == sizes.argmax(), structure=_BALL, iterations=2) & tissue
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return ndimage.binary_dilation(body, structure=_BALL)


def restrict_to_body(probabilities: np.ndarray, model_input: np.ndarray, spec: GridModelSpec) -> np.ndarray:
    """``probabilities`` (C, z, y, x) with each ``inside_body`` label's share outside the body moved to the
    background; a windowed (CT) model only, whose input is (z, y, x) or (channels, z, y, x)."""
    inside = [label.value for label in spec.labels if label.inside_body]
    if spec.preprocess.normalize != "window":
        return probabilities  # the body is found by its HU: CT only
    first = model_input[0] if model_input.ndim == 4 else model_input  # several CT channels: the first's body
    if not inside or probabilities.ndim != 4 or probabilities.shape[1:] != first.shape:
        return probabilities  # nothing to do, or an output ``runtime.check`` refuses with the reason
    outside = ~body_mask(first, spec.preprocess.window)
    for value in inside:
        probabilities[0][outside] += probabilities[value][outside]
        probabilities[value][outside] = 0.0
    return probabilities
