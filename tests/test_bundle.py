"""MONAI Model Zoo bundles (kind monai-bundle): described from their files, refused with the reason when they
cannot run, and their mask equal to what MONAI produces running the same bundle on the same volume written
as NIfTI (``python -m monai.bundle run``, the bundles' own command). Bundles are copied from the shared zoo
into a tmp folder, weights of their declared architecture made there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import PhantomSeries, phantom_series, require
from db.errors import ConfigurationError
from worker.models import registry
from worker.models.bundle_spec import describe_bundle
from worker.models.labels import by_name, coded_labels
from worker.models.runtime import segment
from zoo import LABELS, LOWRES, ZOO, copy_bundle, make_bundle, phantom

pytestmark = pytest.mark.skipif(not ZOO.exists(), reason=f"the shared bundles are not at {ZOO}")


def channel_def(bundle: str) -> dict[int, str]:
    meta = json.loads((ZOO / bundle / "configs" / "metadata.json").read_text())
    return {int(k): v for k, v in meta["network_data_format"]["outputs"]["pred"]["channel_def"].items() if int(k)}


def test_names_resolve_to_snomed_with_laterality_as_modifier() -> None:
    kidney, right = by_name("kidney_right")  # type: ignore[misc]
    assert (kidney.value, right.meaning) == ("64033007", "Right")  # type: ignore[union-attr]
    assert by_name("Right adrenal gland")[0].meaning == "Adrenal gland"  # type: ignore[index]
    assert by_name("Gallbladder")[1] is None  # type: ignore[index]
    assert by_name("Left Kideny") is None and by_name("vertebrae_L5") is None


def test_an_uncodable_label_stops_start_up_naming_every_such_label(tmp_path: Path) -> None:
    labels = channel_def("wholeBody_ct_segmentation")
    assert sum(by_name(n) is not None for n in labels.values()) == 29
    with pytest.raises(ConfigurationError, match=r"75 label\(s\) of wb have no SNOMED CT code .*vertebrae_L5"):
        coded_labels(labels, tmp_path / "labels.toml", "wb")
    coded = coded_labels(labels, LABELS / "wholeBody_ct_segmentation.labels.toml", "wb")
    hip = next(c for c in coded if c.name == "hip_left")
    assert len(coded) == 104 and hip.modifier is not None and hip.modifier.meaning == "Left"
    assert hip.type.meaning.startswith("Bone structure of ilium")  # labels.toml overrides by-name "Hip"
    bundle = copy_bundle("wholeBody_ct_segmentation", tmp_path / "wb")
    (bundle / "labels.toml").unlink()
    with pytest.raises(ConfigurationError, match="model wb: 75 label"):
        registry.describe(registry.ModelEntry("wb", "monai-bundle", bundle, "cpu"))


def test_labels_toml_sets_codes_and_colours_and_refuses_strays(tmp_path: Path) -> None:
    toml = tmp_path / "labels.toml"
    toml.write_text('[labels.spleen]\ntype = { value = "78961009", meaning = "Spleen" }\ncolor = [157, 108, 162]\n')
    (label,) = coded_labels({1: "spleen"}, toml, "m")
    assert label.color == (157, 108, 162) and label.type.scheme == "SCT"
    toml.write_text('[labels.spleen]\ntype = "Splen"\n')
    with pytest.raises(ConfigurationError, match="labels.spleen.type: 'Splen' is not a keyword"):
        coded_labels({1: "spleen"}, toml, "m")
    toml.write_text('[labels.liver]\ntype = "Liver"\n')
    with pytest.raises(ConfigurationError, match=r"labels \['liver'\] are not labels of m"):
        coded_labels({1: "spleen"}, toml, "m")


@pytest.mark.parametrize("bundle", ["swin_unetr_btcv_segmentation", "prostate_mri_anatomy"])
def test_shipped_labels_toml_completes_the_bundle(bundle: str) -> None:
    names = channel_def(bundle)
    assert len(coded_labels(names, LABELS / f"{bundle}.labels.toml", bundle)) == len(names)


def test_a_four_channel_bundle_names_its_channels_and_inconsistent_metadata_is_refused(tmp_path: Path) -> None:
    bundle = copy_bundle("brats_mri_segmentation", tmp_path / "brats")
    spec = registry.describe(registry.ModelEntry("brats", "monai-bundle", bundle, "cpu"))
    assert spec.channels == ("T1c", "T1", "T2", "FLAIR") and len(spec.labels) == 3
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["inputs"]["image"]["channel_def"]["3"]
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigurationError, match=r"input num_channels is 4 but its channel_def names channels "
                                                 r"\[0, 1, 2\]; expected 0..3"):
        registry.describe(registry.ModelEntry("brats", "monai-bundle", bundle, "cpu"))


def test_the_description_comes_from_metadata(tmp_path: Path) -> None:
    spec = describe_bundle(copy_bundle("spleen_ct_segmentation", tmp_path / "spleen"), {})
    assert (spec.name, spec.version, spec.modality, spec.spacing) == ("Spleen CT segmentation", "0.5.9", "CT",
                                                                      (1.5, 1.5, 2.0))
    assert [(label.value, label.name, label.type.value) for label in spec.labels] == [(1, "spleen", "78961009")]
    prostate = describe_bundle(copy_bundle("prostate_mri_anatomy", tmp_path / "prostate"), {})
    assert prostate.modality == "MR" and [label.name for label in prostate.labels] == ["central gland",
                                                                                      "peripheral zone"]


def test_missing_and_misfitting_weights_are_refused_naming_the_model(tmp_path: Path) -> None:
    bundle = copy_bundle("spleen_ct_segmentation", tmp_path / "spleen")
    entry = registry.ModelEntry("spleen", "monai-bundle", bundle, "cpu")
    with pytest.raises(ConfigurationError, match=r"model spleen: bundle .*weights .*model\.pt' do not exist"):
        registry.load(entry)
    from monai.networks.nets import UNet

    torch.save(UNet(3, 1, 2, (8, 16), (2,)).state_dict(), bundle / "models" / "model.pt")
    with pytest.raises(ConfigurationError, match="model spleen: .*do not fit its network_def"):
        registry.load(entry)


def test_overrides_choose_what_the_bundle_loads(tmp_path: Path) -> None:
    bundle = copy_bundle("wholeBody_ct_segmentation", tmp_path / "wb")
    highres = describe_bundle(bundle, {})
    lowres = describe_bundle(bundle, {"overrides": LOWRES})
    assert highres.weight_files()[0].name == "model.pt" and lowres.weight_files()[0].name == "model_lowres.pt"
    assert len(lowres.labels) == 104


def monai_bundle_run(bundle: Path, image_file: Path, out: Path, overrides: dict[str, object]) -> sitk.Image:
    """MONAI by itself on the NIfTI file: the label map it wrote."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
               "--meta_file", str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle),
               "--datalist", repr([str(image_file)]), "--output_dir", str(out)]
    for key, value in overrides.items():
        command += [f"--{key}", repr(value)]
    done = subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (written,) = sorted(out.rglob("*.nii.gz"))
    return sitk.ReadImage(str(written))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "seed", "crop"), [("spleen_ct_segmentation", 2, 200.0),
                                                    ("prostate_mri_anatomy", 4, 60.0)])
def test_the_mask_equals_monai_running_the_bundle_on_the_nifti(tmp_path: Path, name: str, seed: int,
                                                               crop: float) -> None:
    pytest.importorskip("ignite", reason="the parity test needs the bundle's own runner (pip install '.[test]')")
    pytest.importorskip("nibabel", reason="the bundle extra is not installed (pip install '.[bundle]')")
    bundle = make_bundle(name, tmp_path / name)
    runtime = registry.load(registry.ModelEntry(name, "monai-bundle", bundle, "cpu"))
    image = phantom(seed, crop_mm=crop)
    image_file = tmp_path / "input" / "case.nii.gz"
    image_file.parent.mkdir()
    sitk.WriteImage(image, str(image_file))
    theirs_raw = sitk.GetArrayFromImage(monai_bundle_run(bundle, image_file, tmp_path / "out", {}))
    theirs = np.rint(theirs_raw).astype(np.uint8)  # prostate's Invertd interpolates its label map bilinearly
    ours = segment(runtime, image)
    assert not (bundle / "eval").exists(), "the runtime wrote files: SaveImaged was not dropped"
    assert len(np.unique(ours)) >= 2, "a trivial mask proves nothing"
    agreement = float((ours == theirs).mean())
    # the only differences come from the file: NIfTI stores spacing and affine in float32, so MONAI
    # reading it resamples on a grid ~1e-7 mm off; on the image read back from the NIfTI, none
    assert agreement >= 0.999, f"{(ours != theirs).sum()} of {ours.size} voxels differ"
    from_file = segment(runtime, sitk.ReadImage(str(image_file)))
    assert int((from_file != theirs).sum()) == 0


@pytest.mark.slow
def test_wholebody_gives_one_seg_with_all_its_segments_that_dciodvfy_accepts(tmp_path: Path) -> None:
    from worker.assembly.series import assemble
    from worker.models.postprocess import clean
    from worker.results.content import source_headers
    from worker.results.findings import find
    from worker.results.identity import OutputSettings, result_identity
    from worker.results.seg import build_segmentation

    pytest.importorskip("nibabel", reason="the bundle extra is not installed (pip install '.[bundle]')")
    # the 3 mm grid without window overlap, on 10 mm slices: this test is about one SEG of ~100 segments,
    # not the bundle's accuracy (the parity test above), and dciodvfy's time grows with the frames
    fast = LOWRES | {"displayable_configs#sw_overlap": 0.0}
    bundle = make_bundle("wholeBody_ct_segmentation", tmp_path / "wb", fast)
    runtime = registry.load(registry.ModelEntry("wb", "monai-bundle", bundle, "cpu", {"overrides": fast}))
    series: PhantomSeries = phantom_series(tmp_path / "series", seed=5, matrix=128, slice_thickness=10.0)
    spec = runtime.spec
    volume = assemble(series.paths, spec.min_slices)
    labels = clean(segment(runtime, volume.image), spec.labels, volume.voxel_ml)
    findings = find(volume, labels, spec)
    assert len(findings.present) >= 60, f"only {len(findings.present)} labels found: a weak test"
    identity = result_identity(spec, spec.weights_digest(), volume.sop_instance_uids)
    seg = build_segmentation(volume, source_headers(volume), findings, spec, identity, OutputSettings())
    assert len(seg.SegmentSequence) == len(findings.present)
    lateral = [s for s in seg.SegmentSequence if s.SegmentLabel == "kidney_left"]
    if lateral:
        modifier = lateral[0].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
        assert modifier.CodeMeaning == "Left"
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    # dciodvfy takes minutes over thousands of frames: called here with a longer wait than conftest's
    checked = subprocess.run([require("dciodvfy"), str(tmp_path / "seg.dcm")], capture_output=True, text=True,
                             timeout=900)
    errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], errors
