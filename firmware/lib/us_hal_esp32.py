# The HAL on a real board (docs/HAL.md): the MicroPython modules themselves.
import time

import bluetooth
import esp32
import machine


class HAL:
    def __init__(self):
        self.machine = machine
        self.esp32 = esp32
        self.bluetooth = bluetooth
        self.time = time

    def open(self, path, mode="r"):
        return open(path, mode)

    def energy(self, state):
        pass  # only the simulator charges power states
