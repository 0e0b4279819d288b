# MicroPython board definition for the urbansense city board (bare ESP32-WROOM-32E, no PSRAM).
# Build (docs/BUILD-IMAGE.md): make -C ports/esp32 BOARD=URBANSENSE_CITY BOARD_DIR=<this directory>
set(IDF_TARGET esp32)

set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    boards/sdkconfig.ble
    ${MICROPY_BOARD_DIR}/sdkconfig.board
)

set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py)
