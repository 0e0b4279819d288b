# Battery voltage through a resistor divider on an ADC pin (ESP32 ADC, 11 dB attenuation,
# read_uv() uses the chip's eFuse calibration).
try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # CPython stand-in for micropython.const
        return x

_SAMPLES = const(4)


class Battery:
    def __init__(self, machine, pin_no, r_top_ohm, r_bottom_ohm, low_mv=3300):
        self._adc = machine.ADC(machine.Pin(pin_no), atten=machine.ADC.ATTN_11DB)
        self._num = r_top_ohm + r_bottom_ohm
        self._den = r_bottom_ohm
        self.low_mv = low_mv

    def read_mv(self):
        total_uv = 0
        for _ in range(_SAMPLES):
            total_uv += self._adc.read_uv()
        return (total_uv // _SAMPLES) * self._num // self._den // 1000

    def is_low(self, battery_mv):
        # Li-SOCl2 holds ~3.6 V until nearly empty, so a drop below low_mv is a late warning.
        return battery_mv < self.low_mv
