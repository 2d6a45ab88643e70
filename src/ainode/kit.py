"""The kit the demo, the tests and the benchmarks share: free ports, waiting for a condition, a stand-in
PACS, sending and echoing over DICOM, and reading a returned SEG back into a label array."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage, Verification

from pacs_node.status import SUCCESS

SENDER_AE = "AINODE-DEMO"
PACS_AE = "DEMO-PACS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], object], timeout: float, message: str | Callable[[], str],
             interval: float = 0.1) -> object:
    """Poll ``condition`` until it returns something truthy; ``TimeoutError`` with ``message`` otherwise.

    ``message`` may be a callable, so a failing wait can report the state it found (a log, a job row).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise TimeoutError(f"{text} (after {timeout:.0f} s)")
        time.sleep(interval)


class StandInPacs:
    """A minimal storage SCP that keeps whatever SEG and SR it receives, as a PACS would."""

    def __init__(self, folder: Path, port: int, ae_title: str = PACS_AE) -> None:
        self.folder = folder
        self.port = port
        self.received: dict[str, Path] = {}  # modality → the latest file of it
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(Verification)
        ae.add_supported_context(SegmentationStorage)
        ae.add_supported_context(Comprehensive3DSRStorage)
        self._server = ae.start_server(("127.0.0.1", port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: Event) -> int:
        path = self.folder / f"{event.request.AffectedSOPInstanceUID}.dcm"
        path.write_bytes(event.encoded_dataset())
        with self._lock:
            self.received[str(event.dataset.Modality)] = path
        return SUCCESS

    def modalities(self) -> dict[str, Path]:
        with self._lock:
            return dict(self.received)

    def stop(self) -> None:
        self._server.shutdown()


def send_files(paths: list[Path], port: int, called: str = "AINODE", calling: str = SENDER_AE) -> list[int]:
    """C-STORE files with pynetdicom (TCP_NODELAY) and return the statuses."""
    ae = AE(ae_title=calling)
    contexts = set()
    for path in paths:  # each file goes as it is stored: propose exactly its SOP class and transfer syntax
        meta = dcmread(path, stop_before_pixels=True).file_meta
        contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)

    def no_delay(event: Event) -> None:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)])
    if not assoc.is_established:
        raise ConnectionError(f"{called} on port {port} refused the association")
    statuses = []
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status) if status and "Status" in status else -1)
    finally:
        assoc.release()
    return statuses


def echo(port: int, called: str = "AINODE", calling: str = SENDER_AE) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def seg_labels(seg_path: Path, source_uids: list[str], names: dict[str, int]) -> np.ndarray:
    """The SEG as a label array over the given source instances, label values taken from ``names``."""
    seg = hd.seg.segread(seg_path)
    rows, cols = int(seg.Rows), int(seg.Columns)
    out = np.zeros((len(source_uids), rows, cols), dtype=np.uint8)
    for description in seg.SegmentSequence:
        value = names.get(str(description.SegmentLabel))
        if value is None:
            continue
        masks = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=source_uids, segment_numbers=[int(description.SegmentNumber)],
            assert_missing_frames_are_empty=True,
        )
        out[masks[..., 0] > 0] = value
    return out
