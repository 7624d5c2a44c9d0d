"""Ed25519 signature verification in pure Python (standard library only, Python >= 3.8), so a device checks
an artifact's signature without `cryptography` or the runtime venv.

The arithmetic follows RFC 8032 section 6 (the reference implementation): points in extended homogeneous
coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z; decoding per section 5.1.3; verification per
section 5.1.7 with the cofactorless equation [S]B = R + [k]A', which the RFC allows ("sufficient, but not
required") and which OpenSSL (what `cryptography` signs and verifies with) also uses. Verification only: no
secret ever reaches a device, so constant time does not matter here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Tuple

Point = Tuple[int, int, int, int]

# RFC 8032 section 5.1: the field prime, the group order and the curve constant d = -121665/121666.
P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)  # a square root of -1 mod p (section 5.1.3, step 3)

# RFC 8410 section 4 / appendix: the DER of a SubjectPublicKeyInfo for Ed25519 is this fixed 12-byte prefix
# (SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }) then the 32-byte public key.
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class InvalidKey(ValueError):
    """The public key is not a PEM/DER Ed25519 SubjectPublicKeyInfo, or its point does not decode."""


def _add(p1: Point, p2: Point) -> Point:
    # RFC 8032 section 6, point_add (formulas of section 5.1.4).
    a = (p1[1] - p1[0]) * (p2[1] - p2[0]) % P
    b = (p1[1] + p1[0]) * (p2[1] + p2[0]) % P
    c = 2 * p1[3] * p2[3] * D % P
    d = 2 * p1[2] * p2[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(scalar: int, point: Point) -> Point:
    # RFC 8032 section 6, point_mul: double and add.
    result = (0, 1, 1, 0)  # the neutral element
    while scalar > 0:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _equal(p1: Point, p2: Point) -> bool:
    # x1/z1 == x2/z2 and y1/z1 == y2/z2 (RFC 8032 section 6, point_equal).
    return (p1[0] * p2[2] - p2[0] * p1[2]) % P == 0 and (p1[1] * p2[2] - p2[1] * p1[2]) % P == 0


def _recover_x(y: int, sign: int) -> int | None:
    # RFC 8032 section 5.1.3, steps 2-4.
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


def _decode_point(data: bytes) -> Point | None:
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % P)


_GY = 4 * pow(5, P - 2, P) % P  # the base point B: y = 4/5, x positive (section 5.1)
_GX = _recover_x(_GY, 0)
assert _GX is not None
BASE: Point = (_GX, _GY, 1, _GX * _GY % P)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether `signature` (64 bytes) is the Ed25519 signature of `message` by `public_key` (32 bytes).

    RFC 8032 section 5.1.7: decode A from the key and R from the signature's first half (failing when either
    does not decode), refuse S >= L, k = SHA-512(R || A || M) mod L, then check [S]B = R + [k]A.
    """
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a = _decode_point(public_key)
    if a is None:
        return False
    r_bytes = signature[:32]
    r = _decode_point(r_bytes)
    if r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(r_bytes + public_key + message).digest(), "little") % L
    return _equal(_mul(s, BASE), _add(r, _mul(k, a)))


def public_key_from_pem(pem: bytes) -> bytes:
    """The 32 raw key bytes of a PEM "PUBLIC KEY" (SubjectPublicKeyInfo, RFC 8410) for Ed25519."""
    try:
        text = pem.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidKey("the key file is not PEM text") from None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 3 or lines[0] != "-----BEGIN PUBLIC KEY-----" or lines[-1] != "-----END PUBLIC KEY-----":
        raise InvalidKey("the key file is not a PEM public key (no BEGIN/END PUBLIC KEY lines)")
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey("the PEM body is not valid base64") from None
    if len(der) != len(SPKI_PREFIX) + 32 or not der.startswith(SPKI_PREFIX):
        raise InvalidKey("the key is not an Ed25519 public key (RFC 8410 SubjectPublicKeyInfo)")
    raw = der[len(SPKI_PREFIX):]
    if _decode_point(raw) is None:
        raise InvalidKey("the key's 32 bytes are not a point on the Ed25519 curve")
    return raw
