"""The rejection note that retracts superseded results: an IHE IOCM Key Object Selection document that
dicom3tools' validator accepts and that references exactly the SEG and SR it rejects."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
from pydicom import dcmread

from conftest import PhantomSeries, dciodvfy
from db.storage import write_atomic
from worker.assembly.series import assemble
from worker.models.spec import load_spec
from worker.results.content import source_headers
from worker.results.findings import find
from worker.results.identity import OutputSettings, result_identity
from worker.results.rejection import REJECTED_FOR_QUALITY_REASONS, build_rejection_note, reference
from worker.results.seg import build_segmentation
from worker.results.sr import build_report


def test_the_rejection_note_references_the_superseded_seg_and_sr_and_validates(
        small_series: PhantomSeries, tmp_path: Path) -> None:
    spec, settings = load_spec(), OutputSettings()
    volume = assemble(small_series.paths, spec.min_slices)
    identity = result_identity(spec, "digest", volume.sop_instance_uids)
    sources, findings = source_headers(volume), find(volume, small_series.case.labels, spec)
    seg = build_segmentation(volume, sources, findings, spec, identity, settings)
    sr = build_report(sources, findings, seg, spec, identity, settings)
    for name, dataset in (("seg.dcm", seg), ("sr.dcm", sr)):
        write_atomic(tmp_path / name, lambda fh, d=dataset: d.save_as(fh, enforce_file_format=True))
    rejected = [reference(d.SOPClassUID, d.SOPInstanceUID, d.SeriesInstanceUID, sources[0]) for d in (seg, sr)]
    newer = result_identity(spec, "digest", volume.sop_instance_uids + ["1.2.3.999"])
    note = build_rejection_note(rejected, spec, newer, settings)
    write_atomic(tmp_path / "ko.dcm", lambda fh: note.save_as(fh, enforce_file_format=True))

    errors, warnings = dciodvfy(tmp_path / "ko.dcm")
    assert errors == [], errors
    print(warnings)
    ko = dcmread(tmp_path / "ko.dcm")
    assert ko.Modality == "KO" and ko.StudyInstanceUID == small_series.identity.study_instance_uid
    title = ko.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == (REJECTED_FOR_QUALITY_REASONS.value, "DCM")
    assert (ko.SeriesNumber, ko.SeriesDescription) == (903, "ainode rejection note")
    referenced = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for item in ko.ContentSequence if "ReferencedSOPSequence" in item}
    assert referenced == {seg.SOPInstanceUID, sr.SOPInstanceUID}
    evidence = {sop.ReferencedSOPInstanceUID for study in ko.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}
    assert evidence == referenced
    assert hd.ko.KeyObjectSelectionDocument.from_dataset(ko).SOPInstanceUID == note.SOPInstanceUID
