import numpy as np

from worker.models.postprocess import clean
from worker.models.spec import Code, LabelSpec

CODE = Code(value="1", meaning="x")


def label(value: int, **options: object) -> LabelSpec:
    return LabelSpec(value=value, name=f"L{value}", category=CODE, type=CODE, **options)  # type: ignore[arg-type]


def test_keep_largest_drops_the_smaller_components_and_specks() -> None:
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:8, 2:8, 2:8] = 1      # 216 voxels
    labels[12:17, 12:17, 12:17] = 1  # 125 voxels
    labels[0, 19, 19] = 1          # 1 voxel
    out = clean(labels, (label(1, keep_largest=2),), voxel_ml=0.001)
    assert out.sum() == 216 + 125 and out[0, 19, 19] == 0


def test_min_volume_and_fill_holes_act_per_label() -> None:
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[2:9, 2:9, 2:9] = 2
    labels[5, 5, 5] = 0             # a hole inside label 2
    labels[15:17, 15:17, 15:17] = 2  # 8 voxels = 0.008 mL
    labels[0:2, 0:2, 18:20] = 1
    out = clean(labels, (label(1), label(2, fill_holes=True, min_volume_ml=0.01)), voxel_ml=0.001)
    assert out[5, 5, 5] == 2, "hole filled"
    assert out[15:17, 15:17, 15:17].sum() == 0, "component under min_volume_ml dropped"
    assert (out == 1).sum() == 8, "other labels untouched"
