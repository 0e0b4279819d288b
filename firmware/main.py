# Board entry point: one wake cycle, then deep sleep. Any escape still ends in deep sleep,
# so a bug costs one cycle, not a hot boot loop that drains the cell.
import machine

_FALLBACK_SLEEP_MS = 600000


def _main():
    sleep_ms = _FALLBACK_SLEEP_MS
    try:
        import us_hal_esp32
        import us_node

        sleep_ms = us_node.run_cycle(us_hal_esp32.HAL())
    except Exception as exc:
        print("urbansense: cycle failed:", exc.__class__.__name__, exc)
    machine.deepsleep(int(sleep_ms))  # the port refuses a float


_main()
