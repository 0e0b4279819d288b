# JSN-SR04T waterproof ultrasonic ranger (mode 0, HC-SR04 compatible): a >= 10 us high
# pulse on TRIG starts a ping; ECHO stays high for the round-trip time.
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

_TRIG_US = const(20)  # datasheet asks >= 10 us; margin for the port's timing jitter
_ECHO_TIMEOUT_US = const(30000)  # ~5 m round trip; the part's range ends near 4.5 m
_PING_GAP_MS = const(60)  # let echoes die out between pings (HC-SR04 class guidance)


def echo_us_to_mm(echo_us):
    # speed of sound 343 m/s at 20 degC: mm = us * 0.343 / 2
    return echo_us * 343 // 2000


class JSNSR04T:
    def __init__(self, machine, sleep_us, sleep_ms, trig_pin, echo_pin):
        self._m = machine
        self._sleep_us = sleep_us
        self._sleep_ms = sleep_ms
        self._trig = machine.Pin(trig_pin, machine.Pin.OUT, value=0)
        self._echo = machine.Pin(echo_pin, machine.Pin.IN)

    def ping_mm(self):
        """One ping: mm, or None on timeout (time_pulse_us returns -1/-2)."""
        self._trig.value(0)
        self._sleep_us(2)
        self._trig.value(1)
        self._sleep_us(_TRIG_US)
        self._trig.value(0)
        us = self._m.time_pulse_us(self._echo, 1, _ECHO_TIMEOUT_US)
        if us < 0:
            return None
        return echo_us_to_mm(us)

    def measure(self, n):
        out = []
        for i in range(n):
            if i:
                self._sleep_ms(_PING_GAP_MS)
            out.append(self.ping_mm())
        return out
