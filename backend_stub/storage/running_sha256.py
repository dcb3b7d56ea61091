"""SHA-256 whose state is a short string: a hash fed slice after slice by jobs that
share nothing but a stored record.

The dataset checksum is the SHA-256 of every item digest in key order, and a sliced
commit reads the items a slice at a time, each slice in its own worker job. ``hashlib``
cannot save its state, so this is SHA-256 itself (FIPS 180-4) in Python: about 70 µs
per 64-byte block, some 70 ms for the 2,000 digests of one slice. Its state is the
eight words, the bytes short of a block and the length::

    >>> h = RunningSha256()
    >>> h.update(b"ab")
    >>> resumed = RunningSha256.load(h.state())
    >>> resumed.update(b"c")
    >>> resumed.hexdigest() == hashlib.sha256(b"abc").hexdigest()
    True
"""

from __future__ import annotations

import hashlib  # noqa: F401  (the doctest compares with it)
import struct

__all__ = ["START", "RunningSha256"]

_K = (
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4,
    0xAB1C5ED5, 0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE,
    0x9BDC06A7, 0xC19BF174, 0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F,
    0x4A7484AA, 0x5CB0A9DC, 0x76F988DA, 0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7,
    0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967, 0x27B70A85, 0x2E1B2138, 0x4D2C6DFC,
    0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85, 0xA2BFE8A1, 0xA81A664B,
    0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070, 0x19A4C116,
    0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7,
    0xC67178F2,
)  # fmt: skip
_H0 = (
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
    0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
)  # fmt: skip
_M = 0xFFFFFFFF


def _compress(h: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    w = list(struct.unpack(">16L", block))
    for i in range(16, 64):
        x, y = w[i - 15], w[i - 2]
        s0 = ((x >> 7 | x << 25) ^ (x >> 18 | x << 14) ^ (x >> 3)) & _M
        s1 = ((y >> 17 | y << 15) ^ (y >> 19 | y << 13) ^ (y >> 10)) & _M
        w.append((w[i - 16] + s0 + w[i - 7] + s1) & _M)
    a, b, c, d, e, f, g, hh = h
    for i in range(64):
        s1 = ((e >> 6 | e << 26) ^ (e >> 11 | e << 21) ^ (e >> 25 | e << 7)) & _M
        t1 = (hh + s1 + ((e & f) ^ (~e & g)) + _K[i] + w[i]) & _M
        s0 = ((a >> 2 | a << 30) ^ (a >> 13 | a << 19) ^ (a >> 22 | a << 10)) & _M
        t2 = (s0 + ((a & b) ^ (a & c) ^ (b & c))) & _M
        hh, g, f, e, d, c, b, a = g, f, e, (d + t1) & _M, c, b, a, (t1 + t2) & _M
    return tuple((x + y) & _M for x, y in zip(h, (a, b, c, d, e, f, g, hh), strict=True))


class RunningSha256:
    """SHA-256 that can be stopped (:meth:`state`) and resumed elsewhere (:meth:`load`).

    >>> RunningSha256().hexdigest() == hashlib.sha256(b"").hexdigest()
    True
    """

    def __init__(self) -> None:
        self._h: tuple[int, ...] = _H0
        self._pending = b""
        self._length = 0

    @classmethod
    def load(cls, state: str) -> RunningSha256:
        """The hash as :meth:`state` left it.

        >>> RunningSha256.load(START).hexdigest() == RunningSha256().hexdigest()
        True
        """
        words, pending, length = state.split(":")
        running = cls()
        running._h = struct.unpack(">8L", bytes.fromhex(words))
        running._pending = bytes.fromhex(pending)
        running._length = int(length)
        return running

    def state(self) -> str:
        """The hash so far, as text (at most 211 characters)."""
        return f"{struct.pack('>8L', *self._h).hex()}:{self._pending.hex()}:{self._length}"

    def update(self, data: bytes) -> None:
        """Hash ``data`` after what came before."""
        self._length += len(data)
        data = self._pending + data
        h = self._h
        end = len(data) - len(data) % 64
        for start in range(0, end, 64):
            h = _compress(h, data[start : start + 64])
        self._h, self._pending = h, data[end:]

    def hexdigest(self) -> str:
        """The SHA-256 of everything hashed, in hex (the state is left as it was)."""
        tail = self._pending + b"\x80" + b"\0" * ((55 - len(self._pending)) % 64)
        tail += struct.pack(">Q", self._length * 8)
        h = self._h
        for start in range(0, len(tail), 64):
            h = _compress(h, tail[start : start + 64])
        return struct.pack(">8L", *h).hex()


#: The state of a hash that has hashed nothing yet.
START = RunningSha256().state()
