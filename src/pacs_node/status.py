"""The C-STORE status codes the node answers with and reads back (PS3.4 B.2.3, PS3.7 C): one vocabulary
for the receiver and the sender."""

from __future__ import annotations

from pydicom.dataset import Dataset

SUCCESS = 0x0000
COERCION_OF_DATA_ELEMENTS = 0xB000
ELEMENTS_DISCARDED = 0xB006
DATASET_DOES_NOT_MATCH_WARNING = 0xB007
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210
UNABLE_TO_PROCESS = 0xC211
UNSPECIFIED_FAILURE = 0xC000  # a failure that names no reason: the start of the "cannot understand" range

# A peer that answers one of these holds the object (the warnings say it changed or dropped something).
STORED = frozenset({SUCCESS, COERCION_OF_DATA_ELEMENTS, ELEMENTS_DISCARDED, DATASET_DOES_NOT_MATCH_WARNING})


def with_comment(code: int, comment: str) -> Dataset:
    """A status dataset with an ErrorComment (64 characters at most, as its VR allows)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status
