"""Shared test helpers: the MicroPython VM runner and a private Mosquitto broker."""
