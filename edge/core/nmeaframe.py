"""NMEA 0183 framing: an arbitrary byte stream -> candidate sentences. Pure.

``NmeaFramer`` cuts a byte stream into candidate sentences (``$...`` / ``!...`` without
the line ending). It survives what real serial lines deliver: non-ASCII garbage and
NUL bytes (skipped), a ``$`` in the middle of a sentence (restart there: the first
part was truncated), ``\\r\\r\\n`` and bare ``\\n`` endings, sentences longer than
``MAX_SENTENCE`` (dropped), and binary frames of u-blox UBX (``B5 62``) and RTCM 3
(``D3``) mixed in (checksum-verified and skipped, so a ``$`` inside their payload
never starts a sentence). Everything is counted in ``stats``.
"""

from __future__ import annotations

import re

__all__ = ["MAX_SENTENCE", "NmeaFramer"]

MAX_SENTENCE = 128  # bytes from '$' to the end of the checksum (NMEA says 82)
MAX_UBX_PAYLOAD = 2048  # larger "frames" are taken for garbage (bounds the wait)

# Inside a sentence: anything not printable ASCII, or a new start character.
_BREAK = re.compile(rb"[^\x20-\x7e]|[$!]")
# Outside a sentence: the next byte that may start something.
_START = re.compile(rb"[$!\xb5\xd3]")


def _crc24q_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
        table.append(crc & 0xFFFFFF)
    return table


_CRC24Q = _crc24q_table()


def _crc24q(data: bytes | bytearray) -> int:
    crc = 0
    table = _CRC24Q
    for b in data:
        crc = ((crc << 8) & 0xFFFFFF) ^ table[(crc >> 16) ^ b]
    return crc


def _ubx_ok(frame: bytes | bytearray) -> bool:
    a = b = 0
    for x in frame[2:-2]:
        a = (a + x) & 0xFF
        b = (b + a) & 0xFF
    return a == frame[-2] and b == frame[-1]


class NmeaFramer:
    """Cut a byte stream into NMEA sentences. Never raises; counts what it drops.

    ``stats`` keys: ``sentences`` (returned), ``garbage_bytes`` (skipped outside a
    sentence, line endings not counted), ``restarts`` (a ``$``/``!`` inside a sentence),
    ``aborted`` (a non-printable byte inside a sentence), ``too_long`` (over
    ``MAX_SENTENCE``), ``ubx`` / ``rtcm3`` (valid binary frames skipped),
    ``binary_bad`` (a binary header whose checksum failed: rescanned as garbage).
    """

    __slots__ = ("_buf", "stats")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.stats: dict[str, int] = dict.fromkeys(
            ("sentences", "garbage_bytes", "restarts", "aborted", "too_long", "ubx",
             "rtcm3", "binary_bad"), 0)

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a sentence or binary frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget a partial sentence (call after the port was reopened)."""
        self._buf.clear()

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        buf = self._buf
        if not buf and data[:1] == b"$" and data[-1:] == b"\n":
            # fast path: exactly one clean line (a capture read line by line)
            body = bytes(data).rstrip(b"\r\n")
            if 1 < len(body) <= MAX_SENTENCE and _BREAK.search(body, 1) is None:
                self.stats["sentences"] += 1
                return [body]
        buf += data
        n = len(buf)
        out: list[bytes] = []
        st = self.stats
        i = 0
        while i < n:
            c = buf[i]
            if c == 0x24 or c == 0x21:  # '$' or '!'
                m = _BREAK.search(buf, i + 1, min(n, i + MAX_SENTENCE + 1))
                if m is None:
                    if n - i > MAX_SENTENCE:
                        st["too_long"] += 1
                        i += 1  # the rest is skipped as garbage up to the next start
                        continue
                    break  # incomplete: wait for more bytes
                k = m.start()
                b = buf[k]
                if b == 0x0D or b == 0x0A:
                    if k - i > 1:
                        out.append(bytes(buf[i:k]))
                    else:
                        st["garbage_bytes"] += 1
                    i = k
                    continue
                if b == 0x24 or b == 0x21:
                    st["restarts"] += 1
                else:
                    st["aborted"] += 1
                i = k
                continue
            if c == 0x0D or c == 0x0A:
                i += 1
                continue
            if c == 0xB5:
                if n - i < 6:
                    break
                if buf[i + 1] == 0x62:
                    length = buf[i + 4] | (buf[i + 5] << 8)
                    if length <= MAX_UBX_PAYLOAD:
                        total = length + 8
                        if n - i < total:
                            break
                        if _ubx_ok(buf[i:i + total]):
                            st["ubx"] += 1
                            i += total
                            continue
                        st["binary_bad"] += 1
            elif c == 0xD3:
                if n - i < 3:
                    break
                if buf[i + 1] & 0xFC == 0:
                    total = (((buf[i + 1] & 0x03) << 8) | buf[i + 2]) + 6
                    if n - i < total:
                        break
                    end = i + total - 3
                    crc = (buf[end] << 16) | (buf[end + 1] << 8) | buf[end + 2]
                    if _crc24q(buf[i:end]) == crc:
                        st["rtcm3"] += 1
                        i += total
                        continue
                    st["binary_bad"] += 1
            # garbage: skip to the next byte that may start something
            m = _START.search(buf, i + 1)
            k = n if m is None else m.start()
            skipped = buf[i:k]
            st["garbage_bytes"] += len(skipped) - skipped.count(b"\r") - skipped.count(b"\n")
            i = k
        del buf[:i]
        st["sentences"] += len(out)
        return out

