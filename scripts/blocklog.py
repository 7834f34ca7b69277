#!/usr/bin/env python3
"""Reader of a dm-log-writes log (the kernel's
Documentation/admin-guide/device-mapper/log-writes.rst, drivers/md/dm-log-writes.c).

The log device holds, in units of the data device's logical sector size S
(512 here):
  sector 0      the super block: le64 magic 0x6a736677736872, le64 version 1,
                le64 nr_entries, le32 sectorsize
  sector 1...   entries, one after the other: a header sector (le64 sector,
                le64 nr_sectors, le64 flags, le64 data_len; a mark's name
                follows the header in the same sector), then nr_sectors
                sectors of the data written (none for a discard or a mark).
Flags: FLUSH 1, FUA 2, DISCARD 4, MARK 8, METADATA 16.

The target logs a plain write only when a flush that follows it completes:
the flush entry comes right after the writes it made durable. A FUA write
is logged when it completes. So the log reads as: FUA writes, then the
group of writes a flush covered, then that flush, and again.

Usage: blocklog.py LOG     prints the entry counts and the marks
"""
import struct
import sys

MAGIC = 0x6A736677736872
FLUSH, FUA, DISCARD, MARK, METADATA = 1, 2, 4, 8, 16
SUPER = struct.Struct("<QQQI")
ENTRY = struct.Struct("<QQQQ")


class Entry:
    __slots__ = ("index", "sector", "nr_sectors", "flags", "offset", "mark")

    def __init__(self, index, sector, nr_sectors, flags, offset, mark):
        self.index = index
        self.sector = sector  # on the data device, in sectorsize units
        self.nr_sectors = nr_sectors
        self.flags = flags
        self.offset = offset  # byte offset of the data in the log file
        self.mark = mark

    @property
    def is_write(self):
        return self.nr_sectors > 0 and not self.flags & (DISCARD | MARK)

    def kind(self):
        if self.flags & MARK:
            return "mark"
        if self.flags & DISCARD:
            return "discard"
        if self.flags & FLUSH:
            return "flush" if not self.nr_sectors else "flush+write"
        if self.flags & FUA:
            return "fua"
        return "write"


class Log:
    def __init__(self, path):
        self.path = path
        self.f = open(path, "rb")
        magic, version, nr, sectorsize = SUPER.unpack(self.f.read(SUPER.size))
        if magic != MAGIC:
            raise ValueError(f"{path}: not a dm-log-writes log (magic {magic:#x})")
        if version != 1:
            raise ValueError(f"{path}: log version {version}, only 1 is known")
        self.sectorsize = sectorsize
        self.entries = []
        pos = sectorsize
        for i in range(nr):
            self.f.seek(pos)
            hdr = self.f.read(sectorsize)
            if len(hdr) < ENTRY.size:
                raise ValueError(f"{path}: entry {i} of {nr} past the end of the log")
            sector, nr_sectors, flags, data_len = ENTRY.unpack_from(hdr)
            mark = None
            if flags & MARK:
                mark = hdr[ENTRY.size:ENTRY.size + data_len].split(b"\0")[0].decode(errors="replace")
            pos += sectorsize
            e = Entry(i, sector, nr_sectors, flags, pos, mark)
            self.entries.append(e)
            if not flags & (DISCARD | MARK):
                pos += nr_sectors * sectorsize

    def data(self, e):
        self.f.seek(e.offset)
        return self.f.read(e.nr_sectors * self.sectorsize)

    def apply(self, img, e):
        """Applies entry E to the open image file IMG (a discard writes zeros)."""
        if e.flags & MARK or not e.nr_sectors:
            return
        img.seek(e.sector * self.sectorsize)
        if e.flags & DISCARD:
            img.write(b"\0" * (e.nr_sectors * self.sectorsize))
        else:
            img.write(self.data(e))

    def marks(self):
        return {e.mark: e.index for e in self.entries if e.flags & MARK}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    log = Log(sys.argv[1])
    counts = {}
    for e in log.entries:
        counts[e.kind()] = counts.get(e.kind(), 0) + 1
    print(f"{len(log.entries)} entries, sector size {log.sectorsize}: "
          + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    for e in log.entries:
        if e.flags & MARK:
            print(f"  mark {e.mark!r} at entry {e.index}")


if __name__ == "__main__":
    main()
