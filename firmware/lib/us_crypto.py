# The one place firmware touches cryptography. AES comes from cryptolib (the ESP32's
# hardware-accelerated block cipher) where the port has it, from us_aes elsewhere.
import hashlib

try:
    import cryptolib

    def aes_ecb(key):
        return cryptolib.aes(key, 1)

except ImportError:
    from us_aes import AES128

    def aes_ecb(key):
        return AES128(key)


def derive_keys(root_key):
    """Root key -> (enc_key, mic_key): one key never serves two purposes."""
    c = aes_ecb(bytes(root_key))
    return (c.encrypt(b"\x01" + bytes(15)), c.encrypt(b"\x02" + bytes(15)))


# HMAC's pads as 512-bit integers: one XOR of the padded key instead of a byte loop each.
_IPAD = int.from_bytes(b"\x36" * 64, "big")
_OPAD = int.from_bytes(b"\x5c" * 64, "big")


def hmac_sha256(key, msg):
    # micropython-lib's hmac defaults to md5 and is not always frozen in: do it by hand.
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    k = int.from_bytes(bytes(key) + bytes(64 - len(key)), "big")
    inner = hashlib.sha256((k ^ _IPAD).to_bytes(64, "big"))
    inner.update(msg)
    outer = hashlib.sha256((k ^ _OPAD).to_bytes(64, "big"))
    outer.update(inner.digest())
    return outer.digest()


def ctr_xor(enc_key, direction, node_id, fcnt, dcnt, data):
    """AES-CTR as LoRaWAN builds it from ECB blocks; encrypts and decrypts alike.

    Counter block A_i = 01 | dir | node_id LE32 | fcnt LE32 | dcnt LE32 | 00 | i (i from 1).
    """
    c = aes_ecb(enc_key)
    out = bytearray(len(data))
    a = bytearray(16)
    a[0] = 1
    a[1] = direction
    a[2:6] = node_id.to_bytes(4, "little")
    a[6:10] = fcnt.to_bytes(4, "little")
    a[10:14] = dcnt.to_bytes(4, "little")
    for blk in range((len(data) + 15) // 16):
        a[15] = blk + 1
        s = c.encrypt(bytes(a))
        base = blk * 16
        for j in range(min(16, len(data) - base)):
            out[base + j] = data[base + j] ^ s[j]
    return bytes(out)
