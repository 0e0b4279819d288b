# Minimal CBOR (RFC 8949) for the wire protocol: unsigned/negative ints, bool, null,
# byte and text strings, arrays and maps. No floats: the protocol sends scaled integers.
# Encodes into a caller-provided bytearray so a wake cycle allocates little.


def _head(buf, major, n):
    mt = major << 5
    if n < 24:
        buf.append(mt | n)
    elif n < 0x100:
        buf.append(mt | 24)
        buf.append(n)
    elif n < 0x10000:
        buf.append(mt | 25)
        buf.append(n >> 8)
        buf.append(n & 0xFF)
    elif n < 0x100000000:
        buf.append(mt | 26)
        buf.extend(n.to_bytes(4, "big"))
    else:
        buf.append(mt | 27)
        buf.extend(n.to_bytes(8, "big"))


def encode_into(buf, obj):
    """Append the CBOR encoding of obj to bytearray buf."""
    if obj is True:
        buf.append(0xF5)
    elif obj is False:
        buf.append(0xF4)
    elif obj is None:
        buf.append(0xF6)
    elif isinstance(obj, int):
        if obj >= 0:
            _head(buf, 0, obj)
        else:
            _head(buf, 1, -1 - obj)
    elif isinstance(obj, (bytes, bytearray)):
        _head(buf, 2, len(obj))
        buf.extend(obj)
    elif isinstance(obj, str):
        b = obj.encode()
        _head(buf, 3, len(b))
        buf.extend(b)
    elif isinstance(obj, (list, tuple)):
        _head(buf, 4, len(obj))
        for item in obj:
            encode_into(buf, item)
    elif isinstance(obj, dict):
        _head(buf, 5, len(obj))
        # Sorted integer keys: deterministic bytes, so golden vectors pin them.
        for k in sorted(obj):
            encode_into(buf, k)
            encode_into(buf, obj[k])
    else:
        raise TypeError("cbor: unsupported type")


def encode(obj):
    buf = bytearray()
    encode_into(buf, obj)
    return bytes(buf)


def _decode(data, pos, depth):
    if depth > 8:
        raise ValueError("cbor: too deep")
    ib = data[pos]
    pos += 1
    major = ib >> 5
    info = ib & 0x1F
    if major == 7:
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info == 22:
            return None, pos
        raise ValueError("cbor: unsupported simple/float")
    if info < 24:
        n = info
    elif info == 24:
        n = data[pos]
        pos += 1
    elif info == 25:
        n = (data[pos] << 8) | data[pos + 1]
        pos += 2
    elif info == 26:
        n = int.from_bytes(data[pos:pos + 4], "big")
        pos += 4
    elif info == 27:
        n = int.from_bytes(data[pos:pos + 8], "big")
        pos += 8
    else:
        raise ValueError("cbor: indefinite length")
    if pos > len(data):
        raise ValueError("cbor: truncated")
    if major == 0:
        return n, pos
    if major == 1:
        return -1 - n, pos
    if major == 2 or major == 3:
        end = pos + n
        if end > len(data):
            raise ValueError("cbor: truncated")
        raw = bytes(data[pos:end])
        return (raw if major == 2 else raw.decode()), end
    if major == 4:
        items = []
        for _ in range(n):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        out = {}
        for _ in range(n):
            k, pos = _decode(data, pos, depth + 1)
            if not isinstance(k, (int, str)):  # a list or map key is unhashable: TypeError
                raise ValueError("cbor: map key")
            v, pos = _decode(data, pos, depth + 1)
            out[k] = v
        return out, pos
    raise ValueError("cbor: unsupported major type")


def decode(data):
    """Decode exactly one CBOR item; raise ValueError on anything else."""
    try:
        obj, pos = _decode(data, 0, 0)
    except IndexError:
        raise ValueError("cbor: truncated")
    if pos != len(data):
        raise ValueError("cbor: trailing bytes")
    return obj
