# Serial encapsulation: frame + CRC-16/CCITT-FALSE (big endian), COBS-stuffed, 0x00-terminated.
# The CRC tells line noise apart from forgery: noise fails the CRC, forgery fails the MIC.

_table = None


def _crc_table():
    global _table
    if _table is None:
        t = []
        for i in range(256):
            c = i << 8
            for _ in range(8):
                c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
            t.append(c & 0xFFFF)
        _table = t
    return _table


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection (check 0x29B1)."""
    t = _crc_table()
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ t[((crc >> 8) ^ b) & 0xFF]
    return crc


def cobs_encode(data):
    out = bytearray()
    code_pos = 0
    out.append(0)
    code = 1
    for b in data:
        if b == 0:
            out[code_pos] = code
            code_pos = len(out)
            out.append(0)
            code = 1
        else:
            out.append(b)
            code += 1
            if code == 0xFF:
                out[code_pos] = code
                code_pos = len(out)
                out.append(0)
                code = 1
    out[code_pos] = code
    return bytes(out)


def cobs_decode(data):
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise ValueError("cobs: zero byte")
        i += 1
        end = i + code - 1
        if end > n:
            raise ValueError("cobs: truncated")
        out.extend(data[i:end])
        i = end
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


def wrap(frame):
    """frame -> bytes to write on the UART, delimiter included."""
    c = crc16(frame)
    return cobs_encode(bytes(frame) + bytes((c >> 8, c & 0xFF))) + b"\x00"


def unwrap(packet):
    """One delimiter-free COBS packet -> frame; ValueError on bad COBS or CRC."""
    raw = cobs_decode(packet)
    if len(raw) < 3:
        raise ValueError("serial: too short")
    if crc16(raw[:-2]) != (raw[-2] << 8) | raw[-1]:
        raise ValueError("serial: bad crc")
    return raw[:-2]
