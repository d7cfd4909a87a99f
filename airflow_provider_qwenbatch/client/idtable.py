"""A compact ``custom_id -> first line`` table, so checking ids of a 2,000,000-line input stays small.

A ``dict[str, int]`` costs about 130 bytes per id (the string, the int and the slot): 260 MB
for two million lines. This table keeps no string, only two hashes of it and the line number
in flat arrays: 16 bytes a slot, under 70 MB at two million ids (load at most 0.7).

Two ids are taken to be the same when both hashes match: a 64-bit ``hash(str)`` (SipHash,
seeded per process) and 32 bits of a second SipHash of the id with a separator prepended,
96 bits in all. Two different ids of an input of ``n`` lines collide with probability about
``n**2 / 2**97``: 3e-17 at two million lines (the batch tags of :mod:`.identity` accept 1e-13).
A collision would report a false ``duplicate_custom_id``, refusing the input before upload;
it can never let a true duplicate through.
"""

from __future__ import annotations

from array import array

_START_BITS = 12
_MASK32 = 0xFFFFFFFF


class CompactIdIndex:
    """Remembers each ``custom_id``'s first position in 16 bytes a slot; same ``setdefault`` as a dict."""

    def __init__(self) -> None:
        self._allocate(_START_BITS)
        self._used = 0

    def _allocate(self, bits: int) -> None:
        size = 1 << bits
        self._mask = size - 1
        self._limit = size * 7 // 10
        self._hash = array("q", bytes(8 * size))
        self._check = array("I", bytes(4 * size))
        # Line 0 marks an empty slot (positions are 1-based).
        self._line = array("I", bytes(4 * size))

    def __len__(self) -> int:
        return self._used

    def setdefault(self, key: str, default: int, /) -> int:
        """Remember ``key`` at position ``default`` unless it is known; return its first position.

        :param key: the ``custom_id``.
        :param default: its 1-based position (at most 4,294,967,295).
        """
        # (Called once per line of a large input: locals only, the free-slot case first.)
        h = hash(key)
        c = hash("\x1f" + key) & _MASK32
        lines = self._line
        mask = self._mask
        i = h & mask
        first = lines[i]
        while first != 0:
            if self._hash[i] == h and self._check[i] == c:
                return first
            i = (i + 1) & mask
            first = lines[i]
        self._hash[i] = h
        self._check[i] = c
        lines[i] = default
        used = self._used = self._used + 1
        if used > self._limit:
            self._grow()
        return default

    def reserve(self, count: int) -> None:
        """Make room for ``count`` ids now, so the table is not regrown (and rehashed) on the way there.

        :param count: how many ids are expected (an estimate; more still fit, the table grows).
        """
        bits = self._mask.bit_length()
        wanted = bits
        while (1 << wanted) * 7 // 10 < count:
            wanted += 1
        if wanted > bits:
            self._rehash(wanted)

    def _grow(self) -> None:
        self._rehash(self._mask.bit_length() + 1)

    def _rehash(self, bits: int) -> None:
        old = (self._hash, self._check, self._line)
        self._allocate(bits)
        hashes, checks, lines, mask = self._hash, self._check, self._line, self._mask
        for h, c, first in zip(*old, strict=True):
            if first == 0:
                continue
            i = h & mask
            while lines[i] != 0:
                i = (i + 1) & mask
            hashes[i], checks[i], lines[i] = h, c, first
