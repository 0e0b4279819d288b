# Freeze the node firmware (firmware/lib) into the image: bytecode runs from flash, nothing is
# loaded into RAM at a wake (bench/RESULTS.md, firmware section). main.py and boot.py stay on
# the filesystem, where `urbansense node provision` writes them with config.json and board.json.
include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821  (manifest builtins)
freeze("$(BOARD_DIR)/../../lib")  # noqa: F821
# The stamp naming the sources frozen (SOURCE_SHA256), written beside this file by
# `python -m urbansense.fieldkit.build stamp` before the build: provision and doctor compare it
# with the laptop's firmware/lib. Without it the build stops here (file not found).
module("us_build.py")  # noqa: F821
