// urbansense city board: ESP32-WROOM-32E on the city carrier (boards/city-wroom32e.json).
#define MICROPY_HW_BOARD_NAME "urbansense city board"
#define MICROPY_HW_MCU_NAME "ESP32"

// No Wi-Fi on a node: BLE only (NimBLE, legacy advertising).
#define MICROPY_PY_NETWORK_WLAN (0)
#define MICROPY_PY_ESPNOW (0)
