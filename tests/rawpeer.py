"""A raw-socket DICOM peer for hostile inputs: it sends what pynetdicom's SCU refuses to build (PDUs encoded
with pynetdicom's own classes, then mangled byte by byte), and small synthetic CT instances to mangle."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.transport import AddressInformation


def ct_instance(study: str, series: str, number: int, rows: int = 512) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Fuzz^Test", "NH-1"
    ds.InstanceNumber, ds.SeriesNumber = number, 1
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.ImagePositionPatient = [0, 0, float(number)]
    ds.PixelData = (np.arange(rows * rows, dtype=np.int16) % 2000).tobytes()
    return ds


def associate_rq(called: str = "AINODE", calling: str = "STORESCU", max_pdu: int = 131072,
                 syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian),
                 abstract: str = CTImageStorage) -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title, prim.called_ae_title = calling, called
    prim.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    prim.called_presentation_address = AddressInformation("127.0.0.1", 2)
    ml = MaximumLengthNotification()
    ml.maximum_length_received = max_pdu
    ic = ImplementationClassUIDNotification()
    ic.implementation_class_uid = "1.2.826.0.1.3680043.10.1078.2"
    prim.user_information = [ml, ic]
    contexts = []
    for i, ts in enumerate(syntaxes):
        cx = build_context(abstract, [ts])
        cx.context_id = 1 + 2 * i
        contexts.append(cx)
    prim.presentation_context_definition_list = contexts
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return pdu.encode()


def encode_dataset(ds: Dataset, implicit: bool = False) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def store_pdus(dataset: bytes, sop_instance: str, context_id: int = 1, max_pdu: int = 131072,
               message_id: int = 1, sop_class: str = CTImageStorage,
               command_edit: dict | None = None) -> list[bytes]:
    """The P-DATA-TF PDUs of one C-STORE-RQ; ``command_edit`` overwrites command elements (e.g. empty UID)."""
    prim = C_STORE()
    prim.MessageID, prim.Priority = message_id, 2
    prim.AffectedSOPClassUID = sop_class
    prim.AffectedSOPInstanceUID = "1.2.3"  # pynetdicom refuses hostile values; they go in below
    prim.DataSet = BytesIO(dataset)
    msg = C_STORE_RQ()
    msg.primitive_to_message(prim)
    msg.command_set.AffectedSOPInstanceUID = sop_instance
    for keyword, value in (command_edit or {}).items():
        if value is None:
            delattr(msg.command_set, keyword)
        else:
            setattr(msg.command_set, keyword, value)
    out = []
    for pdata in msg.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(pdata)
        out.append(pdu.encode())
    if not dataset:  # pynetdicom sends no fragment for an empty dataset; the command says one follows
        out.append(p_data(context_id, 0x02, b""))
    return out


def p_data(context_id: int, control: int, fragment: bytes) -> bytes:
    item = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
    return struct.pack(">BBL", 4, 0, len(item)) + item


@dataclass
class Reply:
    kind: str  # "status", "abort", "closed", "timeout", "reject", "accept"
    status: int | None = None
    comment: str = ""
    seconds: float = 0.0


class Peer:
    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.accepted: dict[int, str] = {}

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _recv_exact(self, n: int, deadline: float) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(n - len(buf))
            except (ConnectionResetError, BrokenPipeError, OSError) as exc:
                if isinstance(exc, TimeoutError):
                    raise
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def read_pdu(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        deadline = time.monotonic() + (timeout or self.timeout)
        header = self._recv_exact(6, deadline)
        if header is None:
            return None
        kind, _, length = struct.unpack(">BBL", header)
        body = self._recv_exact(length, deadline)
        if body is None:
            return None
        return kind, header + body

    def associate(self, **kw: object) -> Reply:
        t0 = time.monotonic()
        if not self.send(associate_rq(**kw)):  # type: ignore[arg-type]
            return Reply("closed")
        return self._wait_accept(t0)

    def _wait_accept(self, t0: float) -> Reply:
        try:
            pdu = self.read_pdu()
        except TimeoutError:
            return Reply("timeout", seconds=time.monotonic() - t0)
        if pdu is None:
            return Reply("closed", seconds=time.monotonic() - t0)
        kind, data = pdu
        if kind == 2:
            ac = A_ASSOCIATE_AC()
            ac.decode(data)
            for item in ac.variable_items:
                if getattr(item, "item_type", None) == 0x21 and item.result == 0:
                    self.accepted[item.presentation_context_id] = str(item.transfer_syntax)
            return Reply("accept", seconds=time.monotonic() - t0)
        return Reply("reject" if kind == 3 else "abort", seconds=time.monotonic() - t0)

    def response(self, timeout: float = 1.0) -> Reply:
        """Wait for a DIMSE response's command set, an A-ABORT or the connection closing."""
        t0 = time.monotonic()
        command = bytearray()
        while True:
            try:
                pdu = self.read_pdu(max(0.01, timeout - (time.monotonic() - t0)))
            except TimeoutError:
                return Reply("timeout", seconds=time.monotonic() - t0)
            if pdu is None:
                return Reply("closed", seconds=time.monotonic() - t0)
            kind, data = pdu
            if kind == 7:
                return Reply("abort", seconds=time.monotonic() - t0)
            if kind != 4:
                return Reply(f"pdu-{kind}", seconds=time.monotonic() - t0)
            pos = 6
            while pos < len(data):
                length = struct.unpack(">L", data[pos:pos + 4])[0]
                control = data[pos + 5]
                if control & 1:
                    command += data[pos + 6:pos + 4 + length]
                    if control & 2:
                        cs = decode(BytesIO(bytes(command)), True, True)
                        return Reply("status", int(cs.Status), str(cs.get("ErrorComment", "")),
                                     time.monotonic() - t0)
                pos += 4 + length

    def release(self) -> None:
        self.send(bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
        try:
            self.read_pdu(1.0)
        except (TimeoutError, OSError):
            pass
        self.close()
