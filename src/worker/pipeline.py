"""One job, start to finish: assemble → segment → post-process → encode SEG and SR → files on disk."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from db.errors import RejectedInput
from db.queue import REJECTION_NOTE, ClaimedJob, ResultFile
from db.storage import result_path, write_atomic
from worker.assembly import channels
from worker.assembly.geometry import MAX_GAP_RATIO
from worker.assembly.series import assemble
from worker.assembly.volume import Volume
from worker.models.postprocess import clean
from worker.models.runtime import Runtime, run, to_source
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
    max_slice_gap_ratio: float = MAX_GAP_RATIO
    merge_frames_of_reference: bool = False


def _describe(volume: Volume) -> list[str]:
    size = volume.image.GetSize()
    notes = [f"{size[0]}x{size[1]}x{size[2]} at " + "x".join(f"{s:.3g}" for s in volume.image.GetSpacing()) + " mm"]
    if volume.acquired is not None:
        gaps = np.diff(volume.acquired.offsets)
        notes[0] = (f"{len(volume.frames)} unevenly spaced slices ({gaps.min():.2f} to {gaps.max():.2f} mm apart "
                    f"along the stack), resampled for the model onto {notes[0]}")
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

    def _check(self, job: ClaimedJob, volume: Volume, note: list[str]) -> str | None:
        """Refuse what cannot be segmented; the one FrameOfReferenceUID to use when several are merged."""
        missing = [ds.SOPInstanceUID for ds in volume.datasets if not ds.get("FrameOfReferenceUID")]
        if missing:
            raise RejectedInput(f"instance {missing[0]} has no FrameOfReferenceUID"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                + ": a segmentation cannot be placed on it")
        if volume.modality != self.spec.modality:
            raise RejectedInput(f"series {job.series_instance_uid} is {volume.modality or 'of no modality'}; "
                                f"model {self.spec.name} takes {self.spec.modality}")
        return self._frame_of_reference(volume, note)

    def _frame_of_reference(self, volume: Volume, note: list[str]) -> str | None:
        """A series must lie in one frame of reference for its SEG to mean anything. Several are refused,
        unless the configuration allows them and assembly has proven the geometry one volume (one
        orientation, positions on one line, spacing checked): then the commonest is used, and said."""
        counts = Counter(str(ds.FrameOfReferenceUID) for ds in volume.datasets)
        if len(counts) == 1:
            return None
        instances = len(volume.datasets)
        if not self.config.merge_frames_of_reference:
            raise RejectedInput(f"the {instances} instances name {len(counts)} different FrameOfReferenceUIDs: "
                                "not one frame of reference, so no segmentation can be placed on them "
                                "(worker.merge_frames_of_reference = true processes such a series as one volume "
                                "when its geometry is one)")
        chosen = counts.most_common(1)[0][0]
        note.append(f"{len(counts)} FrameOfReferenceUIDs in {instances} instances: the geometry is one volume, "
                    f"processed in one frame of reference, {chosen} (worker.merge_frames_of_reference)")
        return chosen

    def segment(self, volume: Volume, image: sitk.Image | None = None) -> np.ndarray:
        """The model's labels on the volume's source grid: the image, or an uneven stack's acquired slices.
        ``image`` is what the model reads when it is not the volume's own (several series stacked on it)."""
        output = run(self.runtime, volume.image if image is None else image)
        if volume.acquired is None:
            return to_source(output, volume.image)
        return np.concatenate([to_source(output, s) for s in volume.acquired.references(volume.image)])

    def _read(self, paths: tuple[str, ...]) -> Volume:
        return assemble([self.config.storage_root / p for p in paths], self.spec.min_slices,
                        self.config.max_missing_slices, self.config.max_slice_gap_ratio)

    def _assemble(self, job: ClaimedJob, note: list[str]) -> tuple[list[Volume], str | None]:
        """The job's volumes, each checked (the first is the one results lie on), and the frame of reference
        to write when it is not each instance's own."""
        spec, wanted = self.spec, list(self.spec.channels)
        if [c.name for c in job.channels] != wanted:
            raise RejectedInput(f"model {spec.name} takes " + (", ".join(wanted) if wanted else "one series")
                                + "; the job has " + (", ".join(c.name for c in job.channels) or "one series"))
        if not job.channels:
            volume = self._read(job.instance_paths)
            note.extend(_describe(volume))
            return [volume], self._check(job, volume, note)
        volumes = []
        for channel in job.channels:
            volume = self._read(channel.instance_paths)
            if volume.modality != spec.modality:
                raise RejectedInput(f"channel {channel.name} (series {channel.series_instance_uid}) is "
                                    f"{volume.modality or 'of no modality'}; {spec.name} takes {spec.modality}")
            volumes.append(volume)
        frame_of_reference = channels.frame_of_reference(wanted, volumes)
        note.append(channels.describe(wanted, volumes))
        return volumes, frame_of_reference

    def process(self, job: ClaimedJob, report: StageReporter) -> list[ResultFile]:
        @contextmanager
        def stage(name: str) -> Iterator[list[str]]:
            note: list[str] = []
            start = time.perf_counter()
            yield note
            report(name, time.perf_counter() - start, "; ".join(note))

        spec, output = self.spec, self.config.output
        with stage("assemble") as note:
            volumes, frame_of_reference = self._assemble(job, note)
            volume = volumes[0]
            image = channels.stack(volumes) if len(volumes) > 1 else None
        with stage("segment") as note:
            labels = self.segment(volume, image)
            note.append(f"{spec.name} {spec.version} on {self.runtime.device}")
        with stage("postprocess") as note:
            findings = find(volume, clean(labels, spec.labels, volume.voxel_ml), spec)
            note.append(findings.summary)
        identity = result_identity(spec, self.weights_digest, [uid for v in volumes for uid in v.sop_instance_uids])
        with stage("encode") as note:
            sources = source_headers(volume, frame_of_reference)
            others = [ds for v in volumes[1:] for ds in source_headers(v, frame_of_reference)]
            results = self._encode(job, volume, sources, findings, identity, note, others)
            if job.superseded:
                study = sources[0]
                rejected = [reference(r.sop_class_uid, r.sop_instance_uid, r.series_instance_uid, study)
                            for r in job.superseded]
                ko = build_rejection_note(rejected, spec, identity, output)
                results.append(self._save(job, REJECTION_NOTE, ko))
                note.append(f"rejection note for the {len(rejected)} superseded object(s)")
        return results

    def _encode(self, job: ClaimedJob, volume: Volume, sources: list[Dataset], findings: Findings,
                identity: ResultIdentity, note: list[str], others: list[Dataset]) -> list[ResultFile]:
        spec, output = self.spec, self.config.output
        if not findings.present and output.when_nothing_found != "report":
            note.append("nothing found: no output, as configured (output.when_nothing_found)")
            return []
        if not findings.present:
            note.append("nothing found: an SR that says so, no SEG")
            return [self._save(job, "SR", build_nothing_found_report(sources, spec, identity, output,
                                                                         other_sources=others))]
        seg = build_segmentation(volume, sources, findings, spec, identity, output, other_sources=others)
        sr = build_report(sources, findings, seg, spec, identity, output, other_sources=others)
        note.append(f"SEG {len(seg.PerFrameFunctionalGroupsSequence)} frames, "
                    f"{len(seg.SegmentSequence)} segments; SR {len(findings.present)} measurement groups")
        return [self._save(job, "SEG", seg), self._save(job, "SR", sr)]
