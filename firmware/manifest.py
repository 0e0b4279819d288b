# Freeze the node firmware into a custom MicroPython build, so its bytecode runs from flash
# and a wake cycle's heap holds data only (the ~19 KB figure in bench/RESULTS.md rather
# than the ~60 KB of loading .mpy files into RAM at every boot):
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/firmware/manifest.py
include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821  (manifest builtins)
freeze("lib")  # noqa: F821
