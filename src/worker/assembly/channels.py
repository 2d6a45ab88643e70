"""Inputs made of several series of one study: the channels checked to lie in one frame of reference, then
resampled onto the first channel's grid and stacked.

The first channel is the reference: the model's answer goes back onto its source slices and the SEG's frames
are its frames. The others are read on their own grids (another slice thickness, field of view or
position) and interpolated linearly onto it with SimpleITK; what lies outside another channel's volume is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import SimpleITK as sitk

from db.errors import RejectedInput
from worker.assembly.volume import Volume


def frame_of_reference(names: Sequence[str], volumes: Sequence[Volume]) -> str:
    """The one FrameOfReferenceUID every channel lies in, or ``RejectedInput`` naming the channels that
    differ: without one frame of reference, resampling one series onto another means nothing."""
    found: dict[str, list[str]] = {}
    for name, volume in zip(names, volumes):
        uids = {str(ds.get("FrameOfReferenceUID", "")) for ds in volume.datasets}
        if len(uids) != 1 or not next(iter(uids)):
            raise RejectedInput(f"channel {name}: its instances name {len(uids)} FrameOfReferenceUIDs "
                                f"({', '.join(sorted(u or 'none' for u in uids))}); one is needed to stack it")
        found.setdefault(next(iter(uids)), []).append(name)
    if len(found) > 1:
        shown = "; ".join(f"{', '.join(n)} in {uid}" for uid, n in found.items())
        raise RejectedInput(f"the channels lie in {len(found)} frames of reference ({shown}): they cannot be "
                            "placed on one grid, so the model cannot take them together")
    return next(iter(found))


def stack(volumes: Sequence[Volume]) -> sitk.Image:
    """A vector image (float32, one component per channel) on the first volume's grid."""
    reference = volumes[0].image
    components = [sitk.Cast(reference, sitk.sitkFloat32)]
    for volume in volumes[1:]:
        components.append(sitk.Resample(volume.image, reference, sitk.Transform(), sitk.sitkLinear, 0.0,
                                        sitk.sitkFloat32))
    return sitk.Compose(components)


def describe(names: Sequence[str], volumes: Sequence[Volume]) -> str:
    """What each channel was, for the assemble stage's note."""
    def grid(volume: Volume) -> str:
        size, spacing = volume.image.GetSize(), volume.image.GetSpacing()
        return "x".join(map(str, size)) + " at " + "x".join(f"{s:.3g}" for s in spacing) + " mm"

    first = f"{names[0]} {grid(volumes[0])}"
    rest = [f"{name} {grid(volume)}" for name, volume in zip(names[1:], volumes[1:])]
    return f"channels {first} (the grid); " + ", ".join(rest) + f" resampled onto {names[0]}'s grid"
