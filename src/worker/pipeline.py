"""One job, start to finish: assemble → segment → post-process → encode SEG and SR → files on disk."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from db.errors import RejectedInput
from db.queue import REJECTION_NOTE, ClaimedJob, ResultFile
from db.storage import result_path, write_atomic
from worker.assembly.series import assemble
from worker.assembly.volume import Volume
from worker.models.postprocess import clean
from worker.models.runtime import Runtime, segment
from worker.results.content import source_headers
from worker.results.findings import Findings, find
from worker.results.identity import OutputSettings, ResultIdentity, result_identity
from worker.results.rejection import build_rejection_note, reference
from worker.results.seg import build_segmentation
from worker.results.sr import build_nothing_found_report, build_report

StageReporter = Callable[[str, float, str], None]


@dataclass(frozen=True)
class PipelineConfig:
    storage_root: Path
    output: OutputSettings = field(default_factory=OutputSettings)
    max_missing_slices: int = 0


def _describe(volume: Volume) -> list[str]:
    size = volume.image.GetSize()
    notes = [f"{size[0]}x{size[1]}x{size[2]} at " + "x".join(f"{s:.3g}" for s in volume.image.GetSpacing()) + " mm"]
    if volume.interpolated:
        notes.append(f"interpolated {volume.interpolated} missing slice(s)")
    if volume.ignored:
        notes.append(f"ignored {len(volume.ignored)}: " + "; ".join(volume.ignored[:5])
                     + (" …" if len(volume.ignored) > 5 else ""))
    return notes


class Pipeline:
    def __init__(self, runtime: Runtime, config: PipelineConfig) -> None:
        self.runtime = runtime
        self.spec = runtime.spec
        self.config = config
        self.weights_digest = self.spec.weights_digest()

    def _save(self, job: ClaimedJob, kind: str, dataset: Dataset) -> ResultFile:
        relative = result_path(job.study_instance_uid, job.id, kind, str(dataset.SOPInstanceUID))
        write_atomic(self.config.storage_root / relative,
                     lambda fh: dataset.save_as(fh, enforce_file_format=True))
        return ResultFile(kind, str(dataset.SOPClassUID), str(dataset.SOPInstanceUID),
                          str(dataset.SeriesInstanceUID), str(relative))

    def _check(self, job: ClaimedJob, volume: Volume) -> None:
        missing = [ds.SOPInstanceUID for ds in volume.datasets if not ds.get("FrameOfReferenceUID")]
        if missing:
            raise RejectedInput(f"instance {missing[0]} has no FrameOfReferenceUID"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                + ": a segmentation cannot be placed on it")
        if volume.modality != self.spec.modality:
            raise RejectedInput(f"series {job.series_instance_uid} is {volume.modality or 'of no modality'}; "
                                f"model {self.spec.name} takes {self.spec.modality}")

    def process(self, job: ClaimedJob, report: StageReporter) -> list[ResultFile]:
        @contextmanager
        def stage(name: str) -> Iterator[list[str]]:
            note: list[str] = []
            start = time.perf_counter()
            yield note
            report(name, time.perf_counter() - start, "; ".join(note))

        spec, output = self.spec, self.config.output
        with stage("assemble") as note:
            volume = assemble([self.config.storage_root / p for p in job.instance_paths], spec.min_slices,
                              self.config.max_missing_slices)
            self._check(job, volume)
            note.extend(_describe(volume))
        with stage("segment") as note:
            labels = segment(self.runtime, volume.image)
            note.append(f"{spec.name} {spec.version} on {self.runtime.device}")
        with stage("postprocess") as note:
            findings = find(volume, clean(labels, spec.labels, volume.voxel_ml), spec)
            note.append(findings.summary)
        identity = result_identity(spec, self.weights_digest, volume.sop_instance_uids)
        with stage("encode") as note:
            sources = source_headers(volume)
            results = self._encode(job, volume, sources, findings, identity, note)
            if job.superseded:
                study = sources[0]
                rejected = [reference(r.sop_class_uid, r.sop_instance_uid, r.series_instance_uid, study)
                            for r in job.superseded]
                ko = build_rejection_note(rejected, spec, identity, output)
                results.append(self._save(job, REJECTION_NOTE, ko))
                note.append(f"rejection note for the {len(rejected)} superseded object(s)")
        return results

    def _encode(self, job: ClaimedJob, volume: Volume, sources: list[Dataset], findings: Findings,
                identity: ResultIdentity, note: list[str]) -> list[ResultFile]:
        spec, output = self.spec, self.config.output
        if not findings.present and output.when_nothing_found != "report":
            note.append("nothing found: no output, as configured (output.when_nothing_found)")
            return []
        if not findings.present:
            note.append("nothing found: an SR that says so, no SEG")
            return [self._save(job, "SR", build_nothing_found_report(sources, spec, identity, output))]
        seg = build_segmentation(volume, sources, findings, spec, identity, output)
        sr = build_report(sources, findings, seg, spec, identity, output)
        note.append(f"SEG {len(seg.PerFrameFunctionalGroupsSequence)} frames, "
                    f"{len(seg.SegmentSequence)} segments; SR {len(findings.present)} measurement groups")
        return [self._save(job, "SEG", seg), self._save(job, "SR", sr)]
