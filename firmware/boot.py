# Kept minimal: no Wi-Fi, no REPL work. main.py runs the wake cycle.
