"""A reader for the R data files some Debian packages ship text in (R's XDR serialization
format, versions 2 and 3), enough for data: vectors, lists, pairlists, attributes, references.

- `read_lazyload_db(rdx, rdb)`: a package's data/Rdata.rdx + Rdata.rdb (the lazy-load
  database: the .rdx is a compressed serialized index of (offset, length) chunks of the .rdb,
  each chunk a 4-byte big-endian length and a zlib / bzip2 / xz stream of one object);
- `read_rdata(blob)`: a save() file (.RData / .rda: "RDX2\\n"/"RDX3\\n" + a serialized pairlist).

Character vectors come back as lists of str (None for NA); numbers as lists; named lists keep
their names in `RList.names`. Functions, bytecode and external pointers are refused.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from typing import Any, Dict, List, Optional

# SEXP types (R Internals, "Serialization Formats").
_NILSXP, _SYMSXP, _LISTSXP, _CLOSXP, _ENVSXP, _PROMSXP, _LANGSXP = 0, 1, 2, 3, 4, 5, 6
_CHARSXP, _LGLSXP, _INTSXP, _REALSXP, _CPLXSXP, _STRSXP = 9, 10, 13, 14, 15, 16
_DOTSXP, _VECSXP, _EXPRSXP, _RAWSXP, _S4SXP = 17, 19, 20, 24, 25
_REFSXP, _NILVALUE, _PERSISTSXP, _PACKAGESXP, _NAMESPACESXP = 255, 254, 247, 248, 249
_ALTREP_SXP, _ATTRLISTSXP, _ATTRLANGSXP = 238, 239, 240
_SINGLETONS = {253, 252, 251, 250, 242, 241}  # global/empty/base env, unbound, missing arg
_NA_INT = -(1 << 31)


class RList(list):
    """An R vector or list; `attributes` maps attribute names to values."""

    attributes: Dict[str, Any]

    def __init__(self, items=()):
        super().__init__(items)
        self.attributes = {}

    @property
    def names(self) -> Optional[List[str]]:
        return self.attributes.get("names")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.refs = data, 0, []

    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return v

    def _length(self) -> int:
        n = self._int()
        if n == -1:
            n = (self._int() << 32) + self._int()
        return n

    def header(self) -> None:
        if self.data[:2] != b"X\n":
            raise ValueError(f"not an R XDR serialization (starts with {self.data[:2]!r})")
        self.pos = 2
        version = self._int()
        self._int()  # writer's R version
        self._int()  # oldest R version that can read it
        if version == 3:
            n = self._int()  # length of the native encoding's name, then the name
            self.pos += n
        elif version != 2:
            raise ValueError(f"R serialization version {version} is not supported")

    def item(self) -> Any:
        flags = self._int()
        kind = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == _REFSXP:
            index = flags >> 8 or self._int()
            return self.refs[index - 1]
        if kind == _NILVALUE or kind in _SINGLETONS:
            return None
        if kind in (_PERSISTSXP, _PACKAGESXP, _NAMESPACESXP):
            self._int()
            value = [self.item() for _ in range(self._int())]
            self.refs.append(value)
            return value
        if kind == _SYMSXP:
            value = self.item()
            self.refs.append(value)
            return value
        if kind in (_LISTSXP, _LANGSXP, _PROMSXP, _DOTSXP, _ATTRLISTSXP, _ATTRLANGSXP):
            out = RList()
            node_attr = None
            # A pairlist is a chain of nodes; read it iteratively (CDRs can be very long).
            while True:
                node_attr = self.item() if has_attr else node_attr
                tag = self.item() if has_tag else None
                value = self.item()
                out.append(value)
                out.attributes.setdefault("names", []).append(tag)
                flags = self._int()
                kind = flags & 0xFF
                has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
                if kind not in (_LISTSXP, _LANGSXP, _PROMSXP, _DOTSXP, _ATTRLISTSXP, _ATTRLANGSXP):
                    self.pos -= 4
                    tail = self.item()
                    if tail is not None:
                        raise ValueError("improper pairlist")
                    return out
        if kind == _ENVSXP:
            env: Dict[str, Any] = {}
            self.refs.append(env)
            self._int()  # locked
            env.update(enclos=self.item(), frame=self.item(), hashtab=self.item(), attrib=self.item())
            return env
        if kind == _CHARSXP:
            n = self._int()
            if n == -1:
                return None
            raw = self.data[self.pos:self.pos + n]
            self.pos += n
            return raw.decode("utf-8") if not (flags >> 12) & 4 else raw.decode("latin-1")
        if kind in (_LGLSXP, _INTSXP):
            n = self._length()
            ints = struct.unpack_from(f">{n}i", self.data, self.pos)
            self.pos += 4 * n
            value = RList(None if v == _NA_INT else v for v in ints)
        elif kind == _REALSXP:
            n = self._length()
            value = RList(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        elif kind == _CPLXSXP:
            n = self._length()
            pairs = struct.unpack_from(f">{2 * n}d", self.data, self.pos)
            self.pos += 16 * n
            value = RList(complex(pairs[i], pairs[i + 1]) for i in range(0, 2 * n, 2))
        elif kind in (_STRSXP, _VECSXP, _EXPRSXP):
            value = RList(self.item() for _ in range(self._length()))
        elif kind == _RAWSXP:
            n = self._length()
            value = RList([self.data[self.pos:self.pos + n]])
            self.pos += n
        elif kind == _S4SXP:
            value = RList()
        elif kind == _ALTREP_SXP:
            info, state, attributes = self.item(), self.item(), self.item()
            return _expand_altrep(info, state, attributes)
        else:
            raise ValueError(f"R object of SEXP type {kind} is not supported (at byte {self.pos})")
        if has_attr:
            attrs = self.item()
            if isinstance(attrs, RList) and attrs.names:
                value.attributes = dict(zip(attrs.names, attrs))
        return value


def _expand_altrep(info: Any, state: Any, attributes: Any) -> Any:
    """The ALTREP classes base R writes for data: compact integer/real sequences (state:
    length, start, step) and wrappers / deferred strings (state: the plain vector first)."""
    name = info[0] if isinstance(info, list) and info else None
    if name in ("compact_intseq", "compact_realseq"):
        n, start, step = state[0], state[1], state[2]
        cast = int if name == "compact_intseq" else float
        value = RList(cast(start + i * step) for i in range(int(n)))
    elif isinstance(state, list) and state:
        value = RList(state[0])
    else:
        raise ValueError(f"ALTREP class {name!r} is not supported")
    if isinstance(attributes, RList) and attributes.names:
        value.attributes = dict(zip(attributes.names, attributes))
    return value


def unserialize(data: bytes) -> Any:
    """One object from R's XDR serialization (what serialize() / saveRDS() write, uncompressed)."""
    reader = _Reader(data)
    reader.header()
    return reader.item()


def _decompress(blob: bytes) -> bytes:
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    if blob[:3] == b"BZh":
        return bz2.decompress(blob)
    if blob[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(blob)
    return blob


def read_rds(blob: bytes) -> Any:
    """The object of a saveRDS() file (gzip, bzip2, xz or uncompressed)."""
    return unserialize(_decompress(blob))


def read_rdata(blob: bytes) -> Dict[str, Any]:
    """{name: object} of a save() file (.RData / .rda)."""
    data = _decompress(blob)
    if data[:5] not in (b"RDX2\n", b"RDX3\n"):
        raise ValueError(f"not an R save() file in XDR format (starts with {data[:5]!r})")
    objects = unserialize(data[5:])
    return dict(zip(objects.names, objects))


def _chunk(rdb: bytes, offset: int, length: int, compressed: int) -> bytes:
    chunk = rdb[offset:offset + length]
    (size,) = struct.unpack_from(">I", chunk, 0)
    if compressed == 0:
        return chunk[4:4 + size]
    if compressed == 1:
        return zlib.decompress(chunk[4:])
    kind, body = chunk[4:5], chunk[5:]  # compressed 2 or 3: a type byte, then the stream
    if kind == b"Z":
        return zlib.decompress(body)
    if kind == b"2":
        return bz2.decompress(body)
    if kind == b"X":
        return lzma.decompress(body)
    if kind == b"0":
        return body[:size]
    raise ValueError(f"unknown lazy-load chunk compression {kind!r}")


def read_lazyload_db(rdx: bytes, rdb: bytes) -> Dict[str, Any]:
    """{name: object} of an R lazy-load database (a package's data/Rdata.rdx + Rdata.rdb)."""
    index = read_rds(rdx)
    fields = dict(zip(index.names, index))
    variables = fields["variables"]
    compressed = fields.get("compressed")
    compressed = int(compressed[0]) if compressed else 1
    return {name: unserialize(_chunk(rdb, int(pos[0]), int(pos[1]), compressed))
            for name, pos in zip(variables.names, variables)}
