"""Between SimpleITK and MONAI: the RAS affine MONAI's readers give, and a reader for an in-memory image.

MONAI's ITKReader and NibabelReader hand transforms an array in (i, j, k) order and a voxel-to-RAS
affine; ``Orientationd``, ``Spacingd`` and ``Invertd`` work from that affine alone, so an image handed
over this way is transformed exactly as the same volume read from a NIfTI file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.data import ImageReader
from monai.transforms import LoadImaged
from monai.utils import MetaKeys, SpaceKeys

from db.errors import RejectedInput

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def affine_ras(image: sitk.Image) -> np.ndarray:
    """The 4×4 voxel-to-RAS affine of an ITK (LPS) image, as MONAI's ``ITKReader`` computes it."""
    direction = np.reshape(image.GetDirection(), (3, 3))
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing())[None, :]
    affine[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ affine


def grid_from_affine(affine: np.ndarray, size: tuple[int, int, int]) -> sitk.Image:
    """An empty ITK (LPS) grid for a RAS affine and an (i, j, k) size: the inverse of ``affine_ras``."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(s) for s in spacing))
    grid.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing[None, :]).reshape(-1)))
    grid.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    return grid


class SimpleITKImageReader(ImageReader):
    """A MONAI reader whose "file" is the image given to it: array (i, j, k) and meta as ``ITKReader``."""

    def __init__(self, image: sitk.Image) -> None:
        self.image = image

    def verify_suffix(self, filename: Any) -> bool:
        return True

    def read(self, data: Any, **kwargs: Any) -> sitk.Image:
        return self.image

    def get_data(self, img: sitk.Image) -> tuple[np.ndarray, dict]:
        if img.GetDimension() != 3:
            raise RejectedInput(f"a bundle takes a 3D image, got {img.GetDimension()}D")
        components = img.GetNumberOfComponentsPerPixel()
        if components == 1:
            array = sitk.GetArrayViewFromImage(img).transpose(2, 1, 0)  # (z, y, x) → MONAI's (i, j, k)
            channel_dim = float("nan")
        else:  # several series as channels: (z, y, x, C) → (C, i, j, k), as ITKReader stacks several files
            array = sitk.GetArrayViewFromImage(img).transpose(3, 2, 1, 0)
            channel_dim = 0
        affine = affine_ras(img)
        meta = {
            "spacing": np.asarray(img.GetSpacing()),
            MetaKeys.ORIGINAL_AFFINE: affine,
            MetaKeys.AFFINE: affine.copy(),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.SPATIAL_SHAPE: np.asarray(img.GetSize()),
            MetaKeys.ORIGINAL_CHANNEL_DIM: channel_dim,
        }
        return array, meta


class InMemoryLoad:
    """Stands in for the bundle's ``LoadImaged``: the same loader (dtype, meta keys), another reader."""

    def __init__(self, load: LoadImaged) -> None:
        self.load = load
        self.image: sitk.Image | None = None

    def __call__(self, data: Mapping[str, Any]) -> dict:
        if self.image is None:
            raise RuntimeError("no image was handed to the bundle")
        return self.load(data, reader=SimpleITKImageReader(self.image))


def same_grid(a: sitk.Image, b: sitk.Image, tolerance_mm: float = 1e-3) -> bool:
    """Whether two grids have the same size and voxel centres to within ``tolerance_mm``."""
    if a.GetSize() != b.GetSize():
        return False
    corner = [s - 1 for s in a.GetSize()]
    return all(math.dist(a.TransformIndexToPhysicalPoint(p), b.TransformIndexToPhysicalPoint(p)) < tolerance_mm
               for p in ([0, 0, 0], corner, [corner[0], 0, 0], [0, corner[1], 0], [0, 0, corner[2]]))
