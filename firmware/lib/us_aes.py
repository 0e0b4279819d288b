# AES-128 encryption (FIPS-197), pure Python: the fallback where the port has no cryptolib
# (the WebAssembly VM, CPython). Only the forward cipher is needed: CTR mode and key
# derivation never decrypt a block.

_SBOX = None


def _sbox():
    global _SBOX
    if _SBOX is None:
        s = bytearray(256)
        p = q = 1
        while True:
            # p: walks GF(2^8) by multiplying by 3; q: its inverse (divide by 3).
            p = p ^ ((p << 1) & 0xFF) ^ (0x1B if p & 0x80 else 0)
            q ^= q << 1
            q ^= q << 2
            q ^= q << 4
            q &= 0xFF
            if q & 0x80:
                q ^= 0x09
            x = q ^ _rotl(q, 1) ^ _rotl(q, 2) ^ _rotl(q, 3) ^ _rotl(q, 4) ^ 0x63
            s[p] = x
            if p == 1:
                break
        s[0] = 0x63
        _SBOX = bytes(s)
    return _SBOX


def _rotl(x, n):
    return ((x << n) | (x >> (8 - n))) & 0xFF


def _xt(a):
    return ((a << 1) ^ 0x1B) & 0xFF if a & 0x80 else a << 1


def _expand(key):
    sb = _sbox()
    w = bytearray(key)
    rcon = 1
    for i in range(16, 176, 4):
        t = w[i - 4:i]
        if i % 16 == 0:
            t = bytearray((sb[t[1]] ^ rcon, sb[t[2]], sb[t[3]], sb[t[0]]))
            rcon = _xt(rcon)
        for j in range(4):
            w.append(w[i - 16 + j] ^ t[j])
    return bytes(w)


class AES128:
    """Same shape as cryptolib.aes(key, 1): ECB, encrypt(16 bytes) -> 16 bytes."""

    def __init__(self, key):
        if len(key) != 16:
            raise ValueError("aes: key must be 16 bytes")
        self._rk = _expand(key)

    def encrypt(self, block):
        sb = _sbox()
        rk = self._rk
        s = bytearray(16)
        for i in range(16):
            s[i] = block[i] ^ rk[i]
        for rnd in range(1, 11):
            # SubBytes + ShiftRows in one permutation (column-major state).
            t = bytearray(16)
            for c in range(4):
                for r in range(4):
                    t[4 * c + r] = sb[s[4 * ((c + r) % 4) + r]]
            if rnd < 10:
                for c in range(4):
                    a0 = t[4 * c]
                    a1 = t[4 * c + 1]
                    a2 = t[4 * c + 2]
                    a3 = t[4 * c + 3]
                    x = a0 ^ a1 ^ a2 ^ a3
                    t[4 * c] = a0 ^ x ^ _xt(a0 ^ a1)
                    t[4 * c + 1] = a1 ^ x ^ _xt(a1 ^ a2)
                    t[4 * c + 2] = a2 ^ x ^ _xt(a2 ^ a3)
                    t[4 * c + 3] = a3 ^ x ^ _xt(a3 ^ a0)
            o = 16 * rnd
            for i in range(16):
                s[i] = t[i] ^ rk[o + i]
        return bytes(s)
