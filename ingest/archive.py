"""Zip containers (DOCX, EPUB, XPS) measured by inflating them, before any parser opens them.

A zip's headers state each member's sizes, and an attacker writes what they like there: a 500 KB
file can declare 100 KB and inflate to gigabytes, and readers that trust the declared size
(python-docx through `zipfile.read()`, which inflates up to 2 GB in one call) only find out after
the damage. So every member is inflated here, a chunk at a time, counting the bytes that really
come out, and the count stops at the limit. Sizes and checksums that do not match the contents
fail the document as damaged, so the readers that run next see honest headers.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from ingest.errors import CorruptDocument, DocumentTooLarge

MAX_UNPACKED_BYTES = 200 * 1024 * 1024  # all members together; the readers hold them in memory
_CHUNK = 1024 * 1024  # compressed bytes read, and most bytes inflated, per step
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a member's local file header, 30 bytes
_LOCAL_SIGNATURE = b"PK\x03\x04"


def check_zip(path: Path, what: str, limit: int = MAX_UNPACKED_BYTES) -> list[zipfile.ZipInfo]:
    """Inflate every member of the zip at `path`, at most `limit` bytes in all; return its members.

    `what` names the document for the messages ("the Word document"). Raises DocumentTooLarge as
    soon as the inflated total passes `limit`, CorruptDocument when the archive is unreadable or a
    member's contents do not match its headers (size or CRC), or it uses a compression method
    other than stored or deflated (the only two DOCX, EPUB and XPS writers use).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CorruptDocument(
            f"{what} is damaged (it is not a readable zip archive); save it again and re-upload"
        ) from exc
    total = 0
    with path.open("rb") as file:
        for info in infos:
            total += _inflated_size(file, info, what, limit - total, limit)
    return infos


def _inflated_size(file: BinaryIO, info: zipfile.ZipInfo, what: str, room: int, limit: int) -> int:
    """Inflate one member chunk by chunk; its real size, or DocumentTooLarge past `room`."""
    damaged = CorruptDocument(
        f"{what} is damaged: the sizes or checksums in its zip archive do not match its "
        f"contents ({info.filename!r}); save it again and re-upload"
    )
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise damaged
    if info.flag_bits & 0x1:
        raise CorruptDocument(f"{what} is encrypted; upload a copy without a password")
    file.seek(info.header_offset)
    header = file.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
        raise damaged
    name_length, extra_length = _LOCAL_HEADER.unpack(header)[-2:]
    file.seek(name_length + extra_length, 1)

    inflater = zlib.decompressobj(-zlib.MAX_WBITS) if info.compress_type else None
    compressed_left = info.compress_size  # bounded by the file: reads stop at its end
    size, crc = 0, 0
    pending = b""  # compressed input the inflater has not consumed yet
    while True:
        if not pending and compressed_left > 0:
            pending = file.read(min(_CHUNK, compressed_left))
            compressed_left -= len(pending)
            if not pending:  # the file ends before the member does
                raise damaged
        if inflater is None:
            out, pending = pending, b""
        else:
            try:
                # At most _CHUNK bytes out per call, whatever the ratio: the bomb never lands.
                out = inflater.decompress(pending, _CHUNK)
            except zlib.error as exc:
                raise damaged from exc
            pending = inflater.unconsumed_tail
        size += len(out)
        if size > room:
            raise DocumentTooLarge(
                f"{what} unpacks to more than {limit / 2**20:g} MB, the limit for the files "
                "inside one document; remove large images or upload a PDF export"
            )
        crc = zlib.crc32(out, crc)
        finished = inflater.eof if inflater is not None else compressed_left == 0
        if finished or (not out and not pending and compressed_left == 0):
            break
    if not finished or size != info.file_size or crc != info.CRC:
        raise damaged
    return size
