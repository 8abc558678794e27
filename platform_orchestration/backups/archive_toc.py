"""The table of contents at the head of a pg_dump custom-format archive, read without pg_restore.

A restore that overlaps the fetch needs to know, while the work file is still being written,
whether the archive's TOC is complete on disk, where it ends, and each entry's id, kind and
section, to hand pg_restore lists of entries (--use-list) per phase. pg_restore itself stays
the engine: nothing here reads the data blocks, and what this reads is only used to choose
which entries each pg_restore run restores.

The layout is pg_dump's (src/bin/pg_dump/pg_backup_archiver.c, ReadHead and ReadToc): the
magic "PGDMP", the format version, integer and offset sizes, the format, the compression,
the creation time, three strings, the entry count, then per entry its fields in a fixed
order that depends on the version. Versions 1.14 (PostgreSQL 12) to 1.16 (17 and 18) are
read; another one is reported as unsupported, and the caller restores the classic way.
"""

from __future__ import annotations

from dataclasses import dataclass

# pg_dump's teSection values.
SECTION_NONE, SECTION_PRE_DATA, SECTION_DATA, SECTION_POST_DATA = 1, 2, 3, 4
_FORMAT_CUSTOM = 1
_SUPPORTED = ((1, 14), (1, 15), (1, 16))


class TocIncomplete(Exception):
    """The bytes end before the TOC does: read again once more of the archive is written."""


class TocUnsupported(Exception):
    """Not a custom-format archive of a version this reader knows (said in the message)."""


@dataclass(frozen=True)
class TocEntry:
    dump_id: int
    has_data: bool  # a data block follows the TOC for it (TABLE DATA, BLOBS)
    desc: str       # "TABLE", "TABLE DATA", "INDEX", "ACL", ...
    tag: str
    section: int
    namespace: str = ""
    dependencies: tuple[int, ...] = ()  # dump ids this entry depends on (pg_dump's order)
    copy_statement: str = ""  # TABLE DATA: the COPY pg_restore runs (names the table loaded)


@dataclass(frozen=True)
class ArchiveToc:
    version: tuple[int, int, int]
    entries: tuple[TocEntry, ...]
    end: int  # offset of the first byte after the TOC (where the data blocks begin)
    int_size: int = 4  # bytes of an integer after its sign byte


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self._data = data
        self.pos = 0
        self.int_size = 4

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self._data):
            raise TocIncomplete
        out = bytes(self._data[self.pos:self.pos + count])
        self.pos += count
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def int(self) -> int:
        sign = self.byte()
        value = int.from_bytes(self.take(self.int_size), "little")
        return -value if sign else value

    def str(self) -> str | None:
        length = self.int()
        if length < 0:
            return None
        return self.take(length).decode("utf-8", errors="replace")


def read_toc(data: bytes | memoryview) -> ArchiveToc:
    """The TOC of the archive whose first bytes are `data`; TocIncomplete when `data` ends
    before it does, TocUnsupported when it is not an archive this reader knows."""
    r = _Reader(data)
    if r.take(5) != b"PGDMP":
        raise TocUnsupported("not a pg_dump custom-format archive")
    version = (r.byte(), r.byte(), r.byte())
    if version[:2] not in _SUPPORTED:
        raise TocUnsupported(f"archive format version {'.'.join(map(str, version))} is not one of "
                             f"{', '.join(f'{a}.{b}' for a, b in _SUPPORTED)}")
    r.int_size, offset_size, form = r.byte(), r.byte(), r.byte()
    if form != _FORMAT_CUSTOM or not 1 <= r.int_size <= 8 or not 1 <= offset_size <= 8:
        raise TocUnsupported(f"archive format {form}, integer size {r.int_size}, offset size {offset_size}")
    # Blocks are found by their end marker, which holds only in uncompressed data (take_backup
    # always dumps -Z0, compressing on our side): anything else is restored from the whole file.
    compression = r.byte() if version[:2] >= (1, 15) else r.int()  # algorithm, or zlib level
    if compression != 0:
        raise TocUnsupported(f"archive data compressed by pg_dump ({compression})")
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        r.int()
    for _ in range(3):  # database name, server version, pg_dump version
        r.str()
    count = r.int()
    if count < 0:
        raise TocUnsupported(f"negative TOC entry count {count}")
    entries = []
    for _ in range(count):
        dump_id = r.int()
        has_data = r.int() != 0
        r.str()  # catalog table oid
        r.str()  # oid
        tag = r.str() or ""
        desc = r.str() or ""
        section = r.int()
        r.str()  # definition
        r.str()  # drop statement
        copy_statement = r.str() or ""
        namespace = r.str() or ""
        r.str()  # tablespace
        r.str()  # table access method (1.14)
        if version[:2] >= (1, 16):
            r.int()  # relkind
        r.str()  # owner
        r.str()  # "with oids" (always false)
        dependencies = []
        while (dependency := r.str()) is not None:  # ended by a NULL string
            if dependency.isdigit():
                dependencies.append(int(dependency))
        r.byte()  # data offset flag
        r.take(offset_size)
        if section not in (SECTION_NONE, SECTION_PRE_DATA, SECTION_DATA, SECTION_POST_DATA):
            raise TocUnsupported(f"TOC entry {dump_id} has unknown section {section}")
        entries.append(TocEntry(dump_id, has_data, desc, tag, section, namespace, tuple(dependencies),
                                copy_statement))
    return ArchiveToc(version, tuple(entries), r.pos, r.int_size)


# Block types of the data that follows the TOC (pg_backup_archiver.h).
BLOCK_DATA, BLOCK_BLOBS = 1, 3


class BlockFinder:
    """Finds where each data block starts in the archive bytes after the TOC, as they are
    written, without reading the rows: a block is its type, its entry's dump id, then
    chunks (a length, the bytes), ended by a length of 0. pg_dump writes table data as COPY
    text, which never holds a NUL byte, and a chunk length other than 0 has at most four
    zero bytes in a row with its sign byte; so in a TABLE DATA block, 1 + int_size zero
    bytes occur only as its end, and the next block must start right there with the next
    expected entry's header. Anything else (a BLOBS block, whose bytes are binary, or a header
    that is not the one expected) ends the finding: the blocks not found are then read by
    pg_restore from the complete file, as usual."""

    def __init__(self, toc: ArchiveToc, expected: tuple[TocEntry, ...]) -> None:
        self.expected = expected
        self.starts: list[int] = []  # offsets of the headers of expected[0], expected[1], ...
        self.stopped = False  # no more starts will be found
        self._end = b"\x00" * (1 + toc.int_size)
        self._header = 2 + toc.int_size
        self._pos = toc.end
        self._in_block = False

    def feed(self, data: bytes, at: int) -> int:
        """Look at `data` (the archive's bytes from offset `at`, where `at` is what the last
        call returned); returns the offset to read from next."""
        pos = at
        while not self.stopped:
            if not self._in_block:
                if len(self.starts) == len(self.expected):
                    self.stopped = True
                    break
                if pos + self._header > at + len(data):
                    break
                header = data[pos - at:pos - at + self._header]
                entry = self.expected[len(self.starts)]
                kind, sign = header[0], header[1]
                dump_id = int.from_bytes(header[2:], "little")
                if kind not in (BLOCK_DATA, BLOCK_BLOBS) or sign != 0 or dump_id != entry.dump_id:
                    self.stopped = True
                    break
                self.starts.append(pos)
                if kind == BLOCK_BLOBS or entry.desc != "TABLE DATA":
                    self.stopped = True  # binary inside: its end cannot be found this way
                    break
                pos += self._header
                self._in_block = True
            else:
                found = data.find(self._end, pos - at)
                if found < 0:
                    return max(pos, at + len(data) - len(self._end) + 1)
                pos = at + found + len(self._end)
                self._in_block = False
        return pos
