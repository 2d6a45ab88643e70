"""Decode a received C-STORE dataset within a memory limit and prove every element decodes, before any write.

``event.dataset`` inflates a Deflated Explicit VR Little Endian dataset with an unbounded
``zlib.decompress`` (pynetdicom ``dsutils.decode``), and pydicom converts each element only when it is
first read, so an undecodable element (an unknown VR such as ``IC``) raises long after the handler has
started storing. Here the inflation stops at a limit, and every element is converted up front.
"""

from __future__ import annotations

import zlib
from io import BytesIO

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

_CHUNK = 1 << 20


class DatasetTooLarge(ValueError):
    """The dataset, or what it inflates to, is larger than the configured limit."""


class UndecodableElement(ValueError):
    """An element's value cannot be decoded; the message names the tag, keyword and VR."""


def inflated_size(deflated: bytes | memoryview, limit: int) -> int:
    """The size ``deflated`` inflates to, found in 1 MiB steps that are thrown away; stops past ``limit``."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size, pending = 0, memoryview(deflated)
    try:
        while size <= limit:
            chunk = inflater.decompress(pending, _CHUNK)
            size += len(chunk)
            pending = memoryview(inflater.unconsumed_tail)
            if inflater.eof or (not pending and not chunk):
                break
    except zlib.error as exc:
        raise UndecodableElement(f"the dataset is not a valid deflate stream: {exc}") from exc
    if size <= limit and not inflater.eof:
        raise UndecodableElement("the deflate stream of the dataset is truncated")
    return size


def inflate_bounded(deflated: bytes | memoryview, limit: int) -> BytesIO:
    """Raw-deflate ``deflated`` (PS3.5 A.5: no zlib header), refusing before it holds more than ``limit``.

    A first pass measures without keeping anything, so a bomb costs CPU (about 1 s per GiB) but no memory.
    """
    if inflated_size(deflated, limit) > limit:
        raise DatasetTooLarge(f"the deflated dataset inflates to more than {limit} bytes")
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = BytesIO()
    out.write(inflater.decompress(deflated))
    out.write(inflater.flush())
    out.seek(0)
    return out


def _describe(ds: Dataset, tag: int) -> str:
    raw = ds.get_item(tag, keep_deferred=True)
    vr = getattr(raw, "VR", "?")
    keyword = keyword_for_tag(tag) or "private or unknown"
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword} VR {str(vr)[:2]!r}"


def check_elements(ds: Dataset, depth: int = 0) -> int:
    """Convert every element (sequences included); returns the number checked.

    Raises ``UndecodableElement`` naming the first element pydicom cannot convert.
    """
    if depth > 16:
        raise UndecodableElement("sequences nested more than 16 deep")
    count = 0
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        declared, value = getattr(raw, "length", None), getattr(raw, "value", None)
        if isinstance(value, bytes) and declared not in (None, 0xFFFFFFFF) and len(value) != declared:
            # pydicom keeps whatever was left of a truncated last element without a word
            raise UndecodableElement(f"element {_describe(ds, tag)} is truncated: {len(value)} of {declared} bytes")
        try:
            elem = ds[tag]
            value = elem.value
            if elem.VR == "SQ":
                for item in value:
                    count += check_elements(item, depth + 1)
            elif elem.VR in ("PN",) and value is not None:
                str(value)  # decode the person name components with the character set
        except UndecodableElement:
            raise
        except Exception as exc:  # pydicom raises many kinds on bad values
            raise UndecodableElement(f"element {_describe(ds, tag)} cannot be decoded: "
                                     f"{type(exc).__name__}") from exc
        count += 1
    return count


def decode_dataset(stream: BytesIO, transfer_syntax: UID, limit: int, inflate_limit: int | None = None) -> Dataset:
    """The dataset of a C-STORE-RQ (``event.request.DataSet``), inflated within ``inflate_limit`` (default
    ``limit``), every element decoded. Refusing a bomb takes about 4.5 ms per MiB of ``inflate_limit`` here."""
    size = stream.seek(0, 2)
    if size > limit:
        raise DatasetTooLarge(f"the dataset has {size} bytes, more than {limit}")
    if transfer_syntax.is_deflated:
        with stream.getbuffer() as view:
            stream = inflate_bounded(view, inflate_limit or limit)
    implicit = transfer_syntax.is_implicit_VR and not transfer_syntax.is_deflated
    little = transfer_syntax.is_little_endian or transfer_syntax.is_deflated
    stream.seek(0)
    try:
        ds = read_dataset(stream, implicit, little)
    except Exception as exc:
        raise UndecodableElement(f"the dataset cannot be parsed: {type(exc).__name__}: {str(exc)[:80]}") from exc
    ds.set_original_encoding(implicit, little)
    check_elements(ds)
    return ds
