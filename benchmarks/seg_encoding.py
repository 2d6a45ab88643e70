"""DICOM-SEG encoding of a 300-frame, 3-segment mask, whole process, side by side with dcmqi's
itkimage2segimage on the same source series and mask in the same run (medians of interleaved rounds).

Both read the source series and the mask from disk and write a BINARY SEG. ainode's process also
prints its stages: the encoding alone is what a running worker (imports done, volume in memory) pays.

    .venv/bin/python benchmarks/seg_encoding.py [--slices 300] [--rounds 3]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from common import arguments, ct_series, timed, tool
from worker.assembly.series import assemble

AINODE = """
import sys, time
from pathlib import Path
start = time.perf_counter()
import numpy as np, SimpleITK as sitk
from worker.assembly.series import assemble
from worker.results.identity import OutputSettings, result_identity
from worker.models.spec import load_spec
from db.storage import write_atomic
from worker.results.content import source_headers
from worker.results.findings import find
from worker.results.seg import build_segmentation
imported = time.perf_counter()
series, mask, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
demo = load_spec()
other = demo.labels[1].model_copy(update={"value": 3, "name": "Other"})
spec = demo.model_copy(update={"labels": demo.labels + (other,)})
volume = assemble(sorted(series.glob("*.dcm")))
labels = sitk.GetArrayFromImage(sitk.ReadImage(mask)).astype(np.uint8)
read = time.perf_counter()
identity = result_identity(spec, "benchmark", [str(ds.SOPInstanceUID) for ds in volume.datasets])
seg = build_segmentation(volume, source_headers(volume), find(volume, labels, spec), spec, identity, OutputSettings())
write_atomic(out, lambda fh: seg.save_as(fh, enforce_file_format=True))
print(f"{imported - start:.3f} {read - imported:.3f} {time.perf_counter() - read:.3f}")
"""


def segment(name: str, label: int, rgb: list[int]) -> dict[str, object]:
    return {"labelID": label, "SegmentLabel": name, "SegmentAlgorithmType": "AUTOMATIC",
            "SegmentAlgorithmName": "benchmark", "recommendedDisplayRGBValue": rgb,
            "SegmentedPropertyCategoryCodeSequence": {"CodeValue": "49755003", "CodingSchemeDesignator": "SCT",
                                                      "CodeMeaning": "Morphologically Altered Structure"},
            "SegmentedPropertyTypeCodeSequence": {"CodeValue": "52988006", "CodingSchemeDesignator": "SCT",
                                                  "CodeMeaning": "Lesion"}}


def main() -> None:
    args = arguments(__doc__)
    itkimage2segimage = tool("itkimage2segimage")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        series = work / "series"
        ct_series(series, args.slices)
        image = assemble(sorted(series.glob("*.dcm"))).image
        z, y, x = np.ogrid[: args.slices, :512, :512]
        labels = np.zeros((args.slices, 512, 512), dtype=np.uint8)
        for value, (cz, cy, cx, r) in enumerate([(0.5, 200, 200, 90), (0.4, 330, 300, 50), (0.7, 260, 380, 40)], 1):
            labels[((z - cz * args.slices) * 1.25) ** 2 + ((y - cy) * 0.7) ** 2 + ((x - cx) * 0.7) ** 2 < r**2] = value
        mask = sitk.GetImageFromArray(labels)
        mask.CopyInformation(image)
        sitk.WriteImage(mask, str(work / "mask.nii.gz"))
        meta = {"ContentCreatorName": "bench^", "SeriesDescription": "bench", "SeriesNumber": "901",
                "InstanceNumber": "1", "ClinicalTrialSeriesID": "1", "ClinicalTrialTimePointID": "1",
                "segmentAttributes": [[segment("Lung", 1, [128, 174, 128]), segment("Lesion", 2, [241, 214, 145]),
                                       segment("Other", 3, [200, 0, 0])]]}
        (work / "meta.json").write_text(json.dumps(meta))
        frames = int((labels.reshape(args.slices, -1).max(axis=1) > 0).sum())
        print(f"mask: {args.slices} slices of 512x512, 3 segments, {frames} slices with a segment; "
              f"{args.rounds} interleaved rounds, whole processes")
        times: dict[str, list[float]] = {"dcmqi itkimage2segimage": [], "ainode (highdicom)": []}
        stages: list[list[float]] = []
        for n in range(args.rounds):
            times["dcmqi itkimage2segimage"].append(timed([
                itkimage2segimage, "--inputImageList", str(work / "mask.nii.gz"), "--inputDICOMDirectory", str(series),
                "--inputMetadata", str(work / "meta.json"), "--outputDICOM", str(work / f"dcmqi{n}.dcm")])[0])
            seconds, _, detail = timed([sys.executable, "-c", AINODE, str(series), str(work / "mask.nii.gz"),
                                        str(work / f"ainode{n}.dcm")])
            times["ainode (highdicom)"].append(seconds)
            stages.append([float(v) for v in detail.split()])
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, seconds in medians.items():
            print(f"{name:24s} {seconds:6.2f} s  (rounds: {', '.join(f'{t:.2f}' for t in times[name])})")
        imports, reading, encoding = (statistics.median(column) for column in zip(*stages))
        print(f"ainode: {imports:.2f} s imports, {reading:.2f} s reading the series and mask, {encoding:.2f} s "
              "building and writing the SEG (what a running worker pays per job)")
        dcmqi = medians["dcmqi itkimage2segimage"]
        print(f"ratio ainode / dcmqi, whole process: {medians['ainode (highdicom)'] / dcmqi:.2f}x the time")
        print(f"ratio ainode / dcmqi, encoding in a running worker: {encoding / dcmqi:.2f}x")


if __name__ == "__main__":
    main()
