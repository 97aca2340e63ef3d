"""Readers for the two resource bundles that hold photos in Debian packages, standard library only:

* Qt resource files (`.rcc`, GCompris): header `qres`, version, then offsets of the tree, the data and the
  names. A tree node is 14 bytes (version 1) or 22 (versions 2-3: + modification time): name offset, flags
  (1 zlib-compressed, 2 directory, 4 zstd), then for a directory its child count and first child, for a
  file its locale and data offset. A name is a UTF-16BE string after a 2-byte length and a 4-byte hash; a
  data blob is a 4-byte length, then the bytes (zlib: a 4-byte uncompressed length, then the stream).
* Eet files (`.edj`, Enlightenment themes and backgrounds): magic 0x1ee70f42, file and dictionary counts,
  then one 24-byte entry per file (offset, size, data size, name offset, name size, flags). Lossy images are
  stored as plain JPEG streams, which is what the photos are.

Both raise ContainerError naming the file on anything that does not parse.
"""

from __future__ import annotations

import struct
import zlib

RCC_MAGIC = b"qres"
EET_MAGIC = 0x1EE70F42


class ContainerError(ValueError):
    """A resource bundle that does not parse; the message names the file and what was wrong."""


def read_rcc(data: bytes, name: str = "<rcc>") -> list[tuple[str, bytes]]:
    """Every file in a Qt resource bundle: [(path inside the bundle, bytes)], decompressed."""
    if data[:4] != RCC_MAGIC or len(data) < 20:
        raise ContainerError(f"{name}: not a Qt resource file (no 'qres' header)")
    version, tree, blobs, names = struct.unpack(">IIII", data[4:20])
    if version not in (1, 2, 3):
        raise ContainerError(f"{name}: Qt resource format version {version} is not supported (1-3 are)")
    node_size = 14 if version == 1 else 22

    def node_name(offset: int) -> str:
        at = names + offset
        (length,) = struct.unpack(">H", data[at : at + 2])
        return data[at + 6 : at + 6 + 2 * length].decode("utf-16-be")

    out: list[tuple[str, bytes]] = []
    seen: set[int] = set()

    def walk(index: int, prefix: str) -> None:
        if index in seen:
            raise ContainerError(f"{name}: resource tree has a cycle at node {index}")
        seen.add(index)
        base = tree + index * node_size
        if base + 14 > len(data):
            raise ContainerError(f"{name}: resource tree node {index} lies past the end of the file")
        name_offset, flags = struct.unpack(">IH", data[base : base + 6])
        label = node_name(name_offset) if index else ""
        if flags & 2:
            count, first = struct.unpack(">II", data[base + 6 : base + 14])
            for child in range(first, first + count):
                walk(child, f"{prefix}{label}/" if index else prefix)
            return
        (offset,) = struct.unpack(">I", data[base + 10 : base + 14])
        at = blobs + offset
        (size,) = struct.unpack(">I", data[at : at + 4])
        blob = data[at + 4 : at + 4 + size]
        if len(blob) != size:
            raise ContainerError(f"{name}: {prefix}{label} is truncated ({len(blob)} of {size} bytes)")
        if flags & 4:
            raise ContainerError(f"{name}: {prefix}{label} is zstd-compressed, which this reader does not decode")
        if flags & 1:
            try:
                blob = zlib.decompress(blob[4:])
            except zlib.error as e:
                raise ContainerError(f"{name}: {prefix}{label}: bad zlib stream ({e})") from None
        out.append((prefix + label, blob))

    try:
        walk(0, "")
    except struct.error as e:
        raise ContainerError(f"{name}: truncated resource file ({e})") from None
    return out


def read_eet(data: bytes, name: str = "<eet>") -> list[tuple[str, bytes]]:
    """Every entry of an Eet file: [(entry name, raw bytes)] (JPEG images come out as JPEG files)."""
    if len(data) < 12:
        raise ContainerError(f"{name}: not an Eet file (too short)")
    magic, count, _ = struct.unpack(">III", data[:12])
    if magic != EET_MAGIC:
        raise ContainerError(f"{name}: not an Eet file (magic {magic:#x}, expected {EET_MAGIC:#x})")
    if 12 + 24 * count > len(data):
        raise ContainerError(f"{name}: Eet directory of {count} entries lies past the end of the file")
    out = []
    for i in range(count):
        offset, size, _, name_offset, name_size, _ = struct.unpack(">IIIIII", data[12 + 24 * i : 36 + 24 * i])
        if offset + size > len(data) or name_offset + name_size > len(data):
            raise ContainerError(f"{name}: Eet entry {i} lies past the end of the file")
        entry = data[name_offset : name_offset + name_size].rstrip(b"\0").decode("utf-8", "replace")
        out.append((entry, data[offset : offset + size]))
    return out


def write_rcc(files: list[tuple[str, bytes]], compress: bool = True) -> bytes:
    """A version-2 Qt resource file holding `files` (flat names under the root): the inverse of read_rcc,
    for tests and fixtures."""
    names, blobs, tree = bytearray(), bytearray(), bytearray()
    name_offsets = []
    for path, _ in files:
        name_offsets.append(len(names))
        encoded = path.encode("utf-16-be")
        names += struct.pack(">HI", len(path), 0) + encoded
    tree += struct.pack(">IHII", 0, 2, len(files), 1) + b"\0" * 8  # the root directory
    for (_, blob), name_offset in zip(files, name_offsets):
        flags, payload = 0, blob
        if compress:
            flags, payload = 1, struct.pack(">I", len(blob)) + zlib.compress(blob)
        tree += struct.pack(">IHHHI", name_offset, flags, 0, 0, len(blobs)) + b"\0" * 8
        blobs += struct.pack(">I", len(payload)) + payload
    header = 24
    return (
        RCC_MAGIC
        + struct.pack(">IIII", 2, header, header + len(tree), header + len(tree) + len(blobs))
        + b"\0" * 4
        + bytes(tree)
        + bytes(blobs)
        + bytes(names)
    )


def write_eet(entries: list[tuple[str, bytes]]) -> bytes:
    """An Eet file holding `entries`: the inverse of read_eet, for tests and fixtures."""
    head = 12 + 24 * len(entries)
    body, directory = bytearray(), bytearray()
    for entry, blob in entries:
        raw = entry.encode() + b"\0"
        name_at = head + len(body)
        body += raw
        data_at = head + len(body)
        body += blob
        directory += struct.pack(">IIIIII", data_at, len(blob), len(blob), name_at, len(raw), 0)
    return struct.pack(">III", EET_MAGIC, len(entries), 0) + bytes(directory) + bytes(body)
