"""One job, start to finish: assemble → segment → post-process → encode SEG and SR → files on disk."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from db.errors import RejectedInput
from db.queue import ClaimedJob, ResultFile
from worker.files import save_atomic
from worker.geometry import assemble
from worker.identity import OutputSettings, result_identity
from worker.modelspec import ModelSpec
from worker.network import Segmenter
from worker.postprocess import clean
from worker.seg import build_segmentation, present_labels
from worker.sr import build_nothing_found_report, build_report

StageReporter = Callable[[str, float, str], None]


@dataclass(frozen=True)
class PipelineConfig:
    storage_root: Path
    output: OutputSettings = field(default_factory=OutputSettings)
    max_missing_slices: int = 0


class Pipeline:
    def __init__(self, spec: ModelSpec, segmenter: Segmenter, config: PipelineConfig) -> None:
        self.spec = spec
        self.segmenter = segmenter
        self.config = config
        self.weights_digest = spec.weights_digest()

    def _save(self, kind: str, dataset: Dataset, folder: Path) -> ResultFile:
        relative = folder / f"{kind}-{dataset.SOPInstanceUID}.dcm"
        save_atomic(dataset, self.config.storage_root / relative)
        return ResultFile(kind, str(dataset.SOPClassUID), str(dataset.SOPInstanceUID),
                          str(dataset.SeriesInstanceUID), str(relative))

    def process(self, job: ClaimedJob, report: StageReporter) -> list[ResultFile]:
        @contextmanager
        def stage(name: str) -> Iterator[list[str]]:
            note: list[str] = []
            start = time.perf_counter()
            yield note
            report(name, time.perf_counter() - start, "; ".join(note))

        root = self.config.storage_root
        with stage("assemble") as note:
            volume = assemble([root / p for p in job.instance_paths], self.spec.min_slices,
                              self.config.max_missing_slices)
            missing = [ds.SOPInstanceUID for ds in volume.datasets if not ds.get("FrameOfReferenceUID")]
            if missing:
                raise RejectedInput(f"instance {missing[0]} has no FrameOfReferenceUID"
                                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                    + ": a segmentation cannot be placed on it")
            if volume.modality != self.spec.modality:
                raise RejectedInput(f"series {job.series_instance_uid} is {volume.modality or 'of no modality'}; "
                                    f"model {self.spec.name} takes {self.spec.modality}")
            size = volume.image.GetSize()
            note.append(f"{size[0]}x{size[1]}x{size[2]} at "
                        + "x".join(f"{s:.3g}" for s in volume.image.GetSpacing()) + " mm")
            if volume.interpolated:
                note.append(f"interpolated {volume.interpolated} missing slice(s)")
            if volume.ignored:
                note.append(f"ignored {len(volume.ignored)}: " + "; ".join(volume.ignored[:5])
                            + (" …" if len(volume.ignored) > 5 else ""))
        with stage("segment") as note:
            labels = self.segmenter.segment(volume.image)
            note.append(f"{self.spec.name} {self.spec.version} on {self.segmenter.device}")
        with stage("postprocess") as note:
            labels = clean(labels, self.spec.labels, volume.voxel_ml)
            present = present_labels(self.spec, labels)
            note.append(", ".join(f"{label.name} {float((labels == label.value).sum()) * volume.voxel_ml:.1f} mL"
                                  for label in present) or "nothing found")
        identity = result_identity(self.spec, self.weights_digest, [str(ds.SOPInstanceUID) for ds in volume.datasets])
        folder = Path("results") / job.study_instance_uid / f"job-{job.id}"
        if not present:
            if self.config.output.when_nothing_found != "report":
                report("encode", 0.0, "nothing found: no output, as configured (output.when_nothing_found)")
                return []
            with stage("encode") as note:
                sr = build_nothing_found_report(volume, self.spec, identity, self.config.output)
                note.append("nothing found: an SR that says so, no SEG")
                return [self._save("SR", sr, folder)]
        with stage("encode") as note:
            seg = build_segmentation(volume, labels, self.spec, identity, self.config.output)
            sr = build_report(volume, labels, seg, self.spec, identity, self.config.output)
            results = [self._save("SEG", seg, folder), self._save("SR", sr, folder)]
            note.append(f"SEG {len(seg.PerFrameFunctionalGroupsSequence)} frames, "
                        f"{len(seg.SegmentSequence)} segments; SR {len(present)} measurement groups")
        return results
