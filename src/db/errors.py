"""One base exception; each subclass tells the caller what to do next.

They live in ``db`` because it is the one package every stage shares: a reason raised anywhere ends
up on a job or a delivery row.
"""


class AinodeError(Exception):
    """Base of every error ainode raises on purpose."""


class ConfigurationError(AinodeError):
    """A setting or model file is wrong: stop start-up and name the key."""


class RejectedInput(AinodeError):
    """The input can never be processed as it is (not a volume, wrong modality): do not retry."""


class TransientFailure(AinodeError):
    """Something outside the input failed (disk, memory, database): retry the job later."""


class PeerFailure(AinodeError):
    """A DICOM peer refused or did not answer: retry the delivery later."""
