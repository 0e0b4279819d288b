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


def sound_dm_s(temperature_cc=None):
    """Speed of sound in air in 0.1 m/s: c = 331.3 + 0.606 * T m/s; 343 m/s (about 20 degC)
    when no temperature is known. Integer-only: echo_us * c stays a small int."""
    if temperature_cc is None:
        return 3430
    return 3313 + 606 * temperature_cc // 10000


def echo_us_to_mm(echo_us, temperature_cc=None):
    # round trip: mm = us * c / 2, c in 0.1 m/s = 1e-4 mm/us
    return echo_us * sound_dm_s(temperature_cc) // 20000


class JSNSR04T:
    def __init__(self, machine, sleep_us, sleep_ms, trig_pin, echo_pin, temperature_cc=None):
        self._m = machine
        self._temperature_cc = temperature_cc
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
        return echo_us_to_mm(us, self._temperature_cc)

    def measure(self, n):
        out = []
        for i in range(n):
            if i:
                self._sleep_ms(_PING_GAP_MS)
            out.append(self.ping_mm())
        return out
