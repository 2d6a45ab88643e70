"""Synthetic chest CT phantoms with exact truth.

The demo model is trained, evaluated and demonstrated on these, so nothing has to be downloaded: a
phantom is a body (fat rim, soft tissue, spine) with two lungs and a few lesions inside them, placed at
a random position and rotation in patient space, and scanned on a random grid (spacing, slice
thickness, orientation, head- or feet-first). Intensities are in Hounsfield units with blur and noise.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from scipy import ndimage

from worker.results.identity import stable_uid

LABEL_LUNG = 1
LABEL_LESION = 2


@dataclass(frozen=True)
class Grid:
    """A scan grid in DICOM patient coordinates (LPS, mm).

    ``size`` and ``spacing`` are in ITK order (column index i, row index j, slice index k); the columns of
    ``direction`` are the directions of i, j and k, so the first two are DICOM's ImageOrientationPatient.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray

    def slice_positions(self) -> np.ndarray:
        """ImagePositionPatient of every slice, shape (k, 3)."""
        k = np.arange(self.size[2])[:, None]
        return self.origin[None, :] + k * self.spacing[2] * self.direction[:, 2][None, :]

    def slice_points(self, k: int) -> np.ndarray:
        """Patient coordinates of every voxel centre of slice k, shape (rows, cols, 3)."""
        i = np.arange(self.size[0], dtype=np.float64) * self.spacing[0]
        j = np.arange(self.size[1], dtype=np.float64) * self.spacing[1]
        base = self.origin + k * self.spacing[2] * self.direction[:, 2]
        return (
            base[None, None, :]
            + j[:, None, None] * self.direction[:, 1][None, None, :]
            + i[None, :, None] * self.direction[:, 0][None, None, :]
        )


@dataclass(frozen=True)
class Ellipsoid:
    centre: np.ndarray  # body frame, mm
    axes: np.ndarray  # semi-axes, mm

    def contains(self, q: np.ndarray) -> np.ndarray:
        return (((q - self.centre) / self.axes) ** 2).sum(axis=-1) <= 1.0


@dataclass(frozen=True)
class Phantom:
    """Anatomy in a body frame; ``rotation`` maps body axes into patient space around ``centre``."""

    centre: np.ndarray
    rotation: np.ndarray
    body_axes: tuple[float, float]
    fat_mm: float
    lungs: tuple[Ellipsoid, Ellipsoid]
    spine_centre: tuple[float, float]
    spine_radius: float
    lesions: tuple[Ellipsoid, ...]
    hu: dict[str, float] = field(default_factory=dict)
    noise_hu: float = 10.0

    def body_frame(self, points: np.ndarray) -> np.ndarray:
        return (points - self.centre) @ self.rotation

    def render_slice(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free HU and labels at the given patient-space points."""
        q = self.body_frame(points)
        ax, ay = self.body_axes
        hu = np.full(q.shape[:-1], self.hu["air"], dtype=np.float32)
        labels = np.zeros(q.shape[:-1], dtype=np.uint8)
        body = (q[..., 0] / ax) ** 2 + (q[..., 1] / ay) ** 2 <= 1.0
        hu[body] = self.hu["fat"]
        inner = (q[..., 0] / (ax - self.fat_mm)) ** 2 + (q[..., 1] / (ay - self.fat_mm)) ** 2 <= 1.0
        hu[inner] = self.hu["soft"]
        spine = (q[..., 0] - self.spine_centre[0]) ** 2 + (q[..., 1] - self.spine_centre[1]) ** 2 <= (
            self.spine_radius**2
        )
        hu[spine & inner] = self.hu["bone"]
        for lung in self.lungs:
            inside = lung.contains(q) & inner
            hu[inside] = self.hu["lung"]
            labels[inside] = LABEL_LUNG
        for lesion in self.lesions:
            inside = lesion.contains(q)
            hu[inside] = self.hu["lesion"]
            labels[inside] = LABEL_LESION
        return hu, labels


def _rotation(rng: np.random.Generator, max_yaw_deg: float, max_tilt_deg: float) -> np.ndarray:
    yaw, pitch, roll = np.deg2rad(
        [rng.uniform(-max_yaw_deg, max_yaw_deg), rng.uniform(-max_tilt_deg, max_tilt_deg),
         rng.uniform(-max_tilt_deg, max_tilt_deg)]
    )
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
    ry = np.array([[np.cos(roll), 0, np.sin(roll)], [0, 1, 0], [-np.sin(roll), 0, np.cos(roll)]])
    return rz @ rx @ ry


def random_phantom(
    rng: np.random.Generator,
    lesions: tuple[int, int] = (1, 4),
    lesion_radius_mm: tuple[float, float] = (6.0, 18.0),
) -> Phantom:
    """A random chest: sizes, position, rotation, intensities, noise and 'lesions' lesions in the lungs."""
    ax, ay = rng.uniform(135, 185), rng.uniform(95, 130)
    fat = rng.uniform(6, 18)
    lung_z = rng.uniform(90, 130)
    lungs = []
    for side in (-1, 1):
        centre = np.array([side * ax * rng.uniform(0.4, 0.5), -ay * rng.uniform(0.0, 0.1), rng.uniform(-5, 5)])
        axes = np.array([ax * rng.uniform(0.27, 0.33), ay * rng.uniform(0.5, 0.62), lung_z * rng.uniform(0.9, 1.1)])
        lungs.append(Ellipsoid(centre, axes))
    found: list[Ellipsoid] = []
    for _ in range(int(rng.integers(lesions[0], lesions[1] + 1))):
        for _attempt in range(50):
            lung = lungs[int(rng.integers(0, 2))]
            radius = rng.uniform(*lesion_radius_mm)
            axes = radius * rng.uniform(0.85, 1.15, size=3)
            room = lung.axes - axes.max() - 3.0
            if np.any(room <= 0):
                continue
            offset = rng.uniform(-1, 1, size=3) * room
            if ((offset / room) ** 2).sum() > 1.0:
                continue
            candidate = Ellipsoid(lung.centre + offset, axes)
            apart = all(
                np.linalg.norm(candidate.centre - other.centre) > axes.max() + other.axes.max() + 4
                for other in found
            )
            if apart:
                found.append(candidate)
                break
    hu = {
        "air": -1000.0,
        "fat": rng.uniform(-120, -80),
        "soft": rng.uniform(25, 55),
        "bone": rng.uniform(300, 700),
        "lung": rng.uniform(-900, -780),
        "lesion": rng.uniform(0, 70),
    }
    return Phantom(
        centre=np.array([rng.uniform(-30, 30), rng.uniform(-20, 40), rng.uniform(-200, 50)]),
        rotation=_rotation(rng, 12.0, 4.0),
        body_axes=(ax, ay),
        fat_mm=fat,
        lungs=(lungs[0], lungs[1]),
        spine_centre=(rng.uniform(-5, 5), ay * rng.uniform(0.6, 0.72)),
        spine_radius=rng.uniform(14, 20),
        lesions=tuple(found),
        hu=hu,
        noise_hu=rng.uniform(5, 25),
    )


ORIENTATIONS = ("HFS", "FFS", "oblique")  # "tilt" (gantry tilt) only when asked for


def random_grid(
    rng: np.random.Generator,
    phantom: Phantom,
    matrix: int = 256,
    slice_thickness: float | None = None,
    orientation: str | None = None,
    min_slices: int = 0,
) -> tuple[Grid, str]:
    """A scan grid covering the lungs, and the PatientPosition that goes with it."""
    orientation = orientation or str(rng.choice(ORIENTATIONS, p=[0.6, 0.25, 0.15]))
    if orientation not in (*ORIENTATIONS, "tilt"):
        raise ValueError(f"orientation {orientation!r} is not one of {ORIENTATIONS + ('tilt',)}")
    thickness = slice_thickness or float(rng.choice([1.25, 2.0, 2.5, 3.0, 5.0]))
    fov = 2 * max(phantom.body_axes) + rng.uniform(20, 80)
    pixel = round(fov / matrix, 3)
    row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    position = "HFS"
    if orientation == "FFS":
        row_dir = np.array([-1.0, 0, 0])
        position = "FFS"
    elif orientation == "oblique":
        angle = np.deg2rad(rng.uniform(-12, 12))
        col_dir = np.array([0, np.cos(angle), np.sin(angle)])
    stack = np.cross(row_dir, col_dir)
    if orientation == "tilt":
        # gantry tilt: the image plane leans, the table (and so the stack) still moves along z
        angle = np.deg2rad(rng.uniform(12, 25) * rng.choice([-1, 1]))
        col_dir = np.array([0, np.cos(angle), -np.sin(angle)])
        stack = np.array([0.0, 0.0, 1.0])
    normal = stack
    lung_extent = max(abs(lung.centre[2]) + lung.axes[2] for lung in phantom.lungs)
    length = 2 * lung_extent + rng.uniform(0, 70)
    slices = max(min_slices, int(np.ceil(length / thickness)))
    direction = np.stack([row_dir, col_dir, normal / np.linalg.norm(normal)], axis=1)
    centre = phantom.centre + rng.uniform(-10, 10, size=3)
    extent = np.array([matrix * pixel, matrix * pixel, slices * thickness])
    spacing = (pixel, pixel, thickness)
    half = direction @ (extent / 2 - np.array(spacing) / 2)
    return Grid((matrix, matrix, slices), spacing, centre - half, direction), position


def render(phantom: Phantom, grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """HU image (with blur and noise) and truth labels on a grid, both shaped (slices, rows, cols)."""
    shape = (grid.size[2], grid.size[1], grid.size[0])
    hu = np.empty(shape, dtype=np.float32)
    labels = np.empty(shape, dtype=np.uint8)
    for k in range(grid.size[2]):
        hu[k], labels[k] = phantom.render_slice(grid.slice_points(k))
    psf_mm = 1.0
    sigma = [min(psf_mm / grid.spacing[2], 1.0), psf_mm / grid.spacing[1], psf_mm / grid.spacing[0]]
    hu = ndimage.gaussian_filter(hu, sigma=sigma, mode="nearest")
    noise = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=[0, 0.6, 0.6])
    noise *= phantom.noise_hu / max(float(noise.std()), 1e-6)
    return hu + noise, labels


@dataclass(frozen=True)
class StudyIdentity:
    """Patient and study attributes written into a phantom series."""

    patient_id: str
    patient_name: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    accession_number: str = "PHANTOM1"
    study_id: str = "1"
    series_number: int = 1

    @classmethod
    def from_seed(cls, seed: int) -> "StudyIdentity":
        src = f"ainode-phantom-{seed}"
        return cls(
            patient_id=f"PHANTOM-{seed:04d}",
            patient_name=f"Phantom^Seed{seed}",
            study_instance_uid=stable_uid(src, "study"),
            series_instance_uid=stable_uid(src, "series"),
            frame_of_reference_uid=stable_uid(src, "frame of reference"),
        )


def slice_uid(identity: StudyIdentity, k: int) -> str:
    """SOP Instance UID of slice ``k`` of a phantom series (callers need not read the files back)."""
    return stable_uid(identity.series_instance_uid, str(k))


def write_series(
    hu: np.ndarray, grid: Grid, identity: StudyIdentity, out_dir: Path, patient_position: str = "HFS"
) -> list[Path]:
    """Write the volume as a CT Image Storage series, one file per slice, and return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime(2026, 1, 1, 12, 0, 0)
    stored = np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16)
    positions = grid.slice_positions()
    iop = [float(v) for v in np.concatenate([grid.direction[:, 0], grid.direction[:, 1]])]
    paths = []
    for k in range(grid.size[2]):
        sop_uid = slice_uid(identity, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = now.strftime("%H%M%S")
        ds.AccessionNumber = identity.accession_number
        ds.Modality = "CT"
        ds.Manufacturer = "ainode phantom"
        ds.ManufacturerModelName = "chest phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Phantom chest CT"
        ds.SeriesDescription = "Phantom chest CT"
        ds.PatientName = identity.patient_name
        ds.PatientID = identity.patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = f"{grid.spacing[2]:g}"
        ds.KVP = "120"
        ds.PatientPosition = patient_position
        ds.StudyInstanceUID = identity.study_instance_uid
        ds.SeriesInstanceUID = identity.series_instance_uid
        ds.StudyID = identity.study_id
        ds.SeriesNumber = identity.series_number
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(float(v), 4) for v in positions[k]]
        ds.ImageOrientationPatient = [round(v, 6) for v in iop]
        ds.FrameOfReferenceUID = identity.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = grid.size[1], grid.size[0]
        ds.PixelSpacing = [f"{grid.spacing[1]:g}", f"{grid.spacing[0]:g}"]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "-500", "1500"
        ds.PixelData = stored[k].tobytes()
        path = out_dir / f"CT{k + 1:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class PhantomCase:
    """One scanned phantom: image, truth and the grid they share."""

    hu: np.ndarray
    labels: np.ndarray
    grid: Grid
    patient_position: str
    phantom: Phantom


def make_case(seed: int, lesions: tuple[int, int] = (1, 4), **grid_options: object) -> PhantomCase:
    """The phantom scan for a seed: the same seed always gives the same case."""
    rng = np.random.default_rng(seed)
    phantom = random_phantom(rng, lesions=lesions)
    grid, position = random_grid(rng, phantom, **grid_options)  # type: ignore[arg-type]
    hu, labels = render(phantom, grid, rng)
    return PhantomCase(hu, labels, grid, position, phantom)


def lesion_centres(phantom: Phantom) -> list[np.ndarray]:
    """Patient coordinates (LPS, mm) of each lesion's centre."""
    return [phantom.centre + phantom.rotation @ lesion.centre for lesion in phantom.lesions]
