"""nnU-Net v2 folders (kind nnunet-v2): the runtime gives the labels nnU-Net gives by itself, on the source grid.

Each test builds a small model folder (nnU-Net's layout, initialised weights) in a tmp dir; nnunetv2 runs
on the volume written as NIfTI (its own folder loading, reader, predictor and writer), the runtime on the
same volume in memory, and every voxel must agree. Skipped where the ``nnunet`` extra is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from db.errors import ConfigurationError, RejectedInput
from nnunet_folder import dataset_json, small_plans, write_model_folder
from worker.models import registry
from worker.models.runtime import segment

pytest.importorskip("nnunetv2", reason="the nnunet extra is not installed (pip install '.[nnunet]')")
from worker.models.nnunet import NnUNetRuntime, find_trainer_class  # noqa: E402

PREDICT = Path(sys.executable).parent / "nnUNetv2_predict_from_modelfolder"


def chest(size=(40, 40, 24), spacing=(2.0, 2.0, 3.0), direction=np.eye(3), seed=0) -> sitk.Image:
    """A small chest-like CT (HU): air, a body, two lungs, a lesion; (x, y, z) ITK size and spacing."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(size[::-1], spacing[::-1])], indexing="ij")
    hu = np.full(z.shape, -1000.0, dtype=np.float32)
    hu[(x / 36) ** 2 + (y / 30) ** 2 <= 1] = 40.0
    for side in (-1, 1):
        hu[((x - side * 16) / 11) ** 2 + (y / 18) ** 2 + (z / 30) ** 2 <= 1] = -850.0
    hu[((x - 14) ** 2 + (y - 4) ** 2 + z ** 2) <= 16] = 30.0
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(float(v) for v in np.asarray(direction).reshape(-1)))
    image.SetOrigin((-40.0, -40.0, -36.0))
    return image


FFS = np.diag([-1.0, 1.0, -1.0])  # feet first: columns run right to left, slices head to feet
OBLIQUE = np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])


def tiny_plans(**kwargs: object) -> dict:
    """Plans small enough that a test volume is one 32^3 tile: seconds on a CPU."""
    return small_plans(patch_size=(32, 32, 32), features=(8, 16, 32), **kwargs)  # type: ignore[arg-type]


def nnunet_by_itself(model: Path, images: dict[str, sitk.Image], work: Path, tta: bool,
                     command_line: bool = False, folds: tuple[int, ...] = (0,)) -> dict[str, np.ndarray]:
    """nnunetv2 on each image written as NIfTI: its own folder loading, reader, predictor and writer.

    In process (``predict_from_files_sequential``) by default; ``command_line`` runs
    ``nnUNetv2_predict_from_modelfolder`` instead (slower: it starts worker processes).
    """
    (work / "in").mkdir(parents=True)
    for name, image in images.items():
        sitk.WriteImage(image, str(work / "in" / f"{name}_0000.nii.gz"))
    if command_line:
        env = {**os.environ, "nnUNet_raw": str(work), "nnUNet_preprocessed": str(work), "nnUNet_results": str(work)}
        command = [str(PREDICT), "-i", str(work / "in"), "-o", str(work / "out"), "-m", str(model),
                   "-f", *map(str, folds), "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"]
        subprocess.run(command + ([] if tta else ["--disable_tta"]), check=True, env=env, capture_output=True,
                       timeout=600)
    else:
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(use_mirroring=tta, perform_everything_on_device=False,
                                    device=torch.device("cpu"), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(model), folds)
        (work / "out").mkdir()
        predictor.predict_from_files_sequential(str(work / "in"), str(work / "out"))
    out = {}
    for name, image in images.items():
        written = sitk.ReadImage(str(work / "out" / f"{name}.nii.gz"))
        assert written.GetSize() == image.GetSize()  # nnU-Net writes its labels on the input grid
        assert np.allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)
        out[name] = sitk.GetArrayFromImage(written)
    return out


# (reader in plans.json, test-time mirroring) → {case: image}; one nnunetv2 run for each
CASES: dict[tuple[str, bool], dict[str, sitk.Image]] = {
    ("SimpleITKIO", True): {"hfs": chest()},
    ("SimpleITKIO", False): {"ffs": chest(direction=FFS, seed=1), "oblique": chest(direction=OBLIQUE, seed=2)},
    ("SimpleITKIOWithReorient", False): {"ffs": chest(direction=FFS, seed=1),
                                         "oblique": chest(direction=OBLIQUE, seed=2)},
}


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], tuple[Path, dict]]:
    out = {}
    for (reader, tta), images in CASES.items():
        root = tmp_path_factory.mktemp(reader)
        model = write_model_folder(root / "model", tiny_plans(reader_writer=reader))
        out[(reader, tta)] = (model, nnunet_by_itself(model, images, root / "run", tta))
    return out


def load(model: Path, **options: object) -> NnUNetRuntime:
    runtime = registry.load(registry.ModelEntry("nn", "nnunet-v2", model, "cpu", options))
    assert isinstance(runtime, NnUNetRuntime)
    return runtime


def assert_same_labels_on_the_source_grid(runtime: NnUNetRuntime, image: sitk.Image, expected: np.ndarray) -> None:
    assert runtime.infer(image).grid is image  # nnU-Net answers on the grid it was given
    labels = segment(runtime, image)
    assert labels.dtype == np.uint8 and labels.shape == expected.shape == image.GetSize()[::-1]
    assert int((labels != expected).sum()) == 0
    assert min(np.bincount(labels.ravel(), minlength=3)) > 0  # every class present: a map worth comparing


@pytest.mark.parametrize(("reader", "tta", "case"), [(*key, c) for key, images in CASES.items() for c in images])
def test_runtime_labels_equal_nnunet_by_itself(references: dict, reader: str, tta: bool, case: str) -> None:
    model, expected = references[(reader, tta)]
    runtime = load(model, mirroring=tta)
    assert_same_labels_on_the_source_grid(runtime, CASES[(reader, tta)][case], expected[case])


def test_ensemble_of_folds_equals_nnunet_by_itself(tmp_path: Path) -> None:
    model = write_model_folder(tmp_path / "model", tiny_plans(), fold=0, seed=0)
    write_model_folder(model, tiny_plans(), fold=1, seed=1)
    image = chest(seed=4)
    expected = nnunet_by_itself(model, {"case": image}, tmp_path / "run", tta=False, folds=(0, 1))
    assert_same_labels_on_the_source_grid(load(model, folds=[0, 1], mirroring=False), image,
                                          expected["case"])


@pytest.mark.slow
def test_runtime_labels_equal_nnunets_command_line(tmp_path: Path) -> None:
    model = write_model_folder(tmp_path / "model", tiny_plans())
    image = chest(direction=OBLIQUE, seed=3)
    expected = nnunet_by_itself(model, {"case": image}, tmp_path / "run", tta=True, command_line=True)
    assert_same_labels_on_the_source_grid(load(model), image, expected["case"])


def test_ras_is_what_nibabels_closest_canonical_gives(tmp_path: Path) -> None:
    """TotalSegmentator reorients with nibabel's as_closest_canonical before nnU-Net: orientation="RAS"
    in the runtime (ITK's DICOMOrient) puts the voxels in that same order."""
    nib = pytest.importorskip("nibabel")
    for direction in (np.eye(3), FFS, OBLIQUE):
        image = chest(direction=direction)
        sitk.WriteImage(image, str(tmp_path / "image.nii.gz"))
        canonical = nib.as_closest_canonical(nib.load(str(tmp_path / "image.nii.gz")))
        assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
        assert np.array_equal(np.asarray(canonical.dataobj).transpose(2, 1, 0),
                              sitk.GetArrayFromImage(sitk.DICOMOrient(image, "RAS")))


def test_reports_labels_channels_and_spacing_from_the_folder(tmp_path: Path) -> None:
    model = write_model_folder(tmp_path / "model", small_plans(spacing=(3.0, 1.5, 1.5)))
    spec = registry.describe(registry.ModelEntry("nn", "nnunet-v2", model, "cpu"))
    assert [(label.value, label.name, label.type.meaning) for label in spec.labels] == [(1, "lung", "Lung"),
                                                                                        (2, "lesion", "Lesion")]
    assert spec.channels == ("CT",) and spec.modality == "CT"
    assert spec.spacing == (1.5, 1.5, 3.0)  # plans say (z, y, x); ainode speaks (x, y, z)


def test_trainer_that_nnunets_own_lookup_cannot_import_still_loads(tmp_path: Path) -> None:
    """TotalSegmentator's checkpoints name nnUNetTrainerNoMirroring; nnunetv2's lookup walks into Primus
    (timm → torchvision) first, which does not import beside the CPU torch."""
    assert find_trainer_class("nnUNetTrainerNoMirroring").__name__ == "nnUNetTrainerNoMirroring"
    model = write_model_folder(tmp_path / "model", tiny_plans(), trainer_name="nnUNetTrainerNoMirroring",
                               mirroring_axes=None)
    runtime = load(model, mirroring=False)
    assert runtime.trainer_name == "nnUNetTrainerNoMirroring"
    labels = segment(runtime, chest())
    assert labels.shape == (24, 40, 40)


def test_trainer_nnunetv2_does_not_ship_builds_the_default_network() -> None:
    """A site's own trainer (changed training, same network) needs no code of its own at inference."""
    assert find_trainer_class("nnUNetTrainerMadeAtSomeSite").__name__ == "nnUNetTrainer"
    assert find_trainer_class("nnUNetTrainer_DASegOrd0_NoMirroring").__name__ == "nnUNetTrainer_DASegOrd0_NoMirroring"


def test_incomplete_or_unfitting_folder_is_refused_with_the_reason(tmp_path: Path) -> None:
    model = write_model_folder(tmp_path / "model")
    with pytest.raises(ConfigurationError, match="model nn: .*fold_1/checkpoint_final.pth is missing"):
        load(model, folds=[1])
    (model / "plans.json").write_text(json.dumps(small_plans(features=(8, 16, 32, 128))))
    with pytest.raises(ConfigurationError, match="model nn: .*weights fold_0/checkpoint_final.pth do not fit"):
        load(model)
    (model / "dataset.json").write_text(json.dumps(dataset_json(labels={"background": 0, "lungg": 1})))
    with pytest.raises(ConfigurationError, match="model nn: 1 label.* no SNOMED CT code .*: lungg"):
        load(model)
    (model / "dataset.json").unlink()
    with pytest.raises(ConfigurationError, match="model nn: .*dataset.json is missing"):
        load(model)
    with pytest.raises(ConfigurationError, match="model nn: nnU-Net model folder '/nowhere' does not exist"):
        load(Path("/nowhere"))


def test_a_model_of_several_input_channels_is_refused(tmp_path: Path) -> None:
    model = write_model_folder(tmp_path / "model", dataset=dataset_json(channels={"0": "T1", "1": "T2"}),
                               plans=tiny_plans(n_channels=2))
    with pytest.raises(ConfigurationError, match=r"needs 2 input channels \(T1, T2\), one series each"):
        load(model)


def test_a_vector_image_is_rejected(tmp_path: Path) -> None:
    runtime = load(write_model_folder(tmp_path / "model", tiny_plans()), mirroring=False)
    two = sitk.Compose(chest(size=(20, 20, 10)), chest(size=(20, 20, 10)))
    with pytest.raises(RejectedInput, match=r"takes a 3D image with 1 channel"):
        runtime.infer(two)
