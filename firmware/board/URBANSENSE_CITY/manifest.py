# Freeze the node firmware (firmware/lib) into the image: bytecode runs from flash, nothing is
# loaded into RAM at a wake (bench/RESULTS.md, firmware section). main.py and boot.py stay on
# the filesystem, where `urbansense node provision` writes them with config.json and board.json.
include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821  (manifest builtins)
freeze("$(BOARD_DIR)/../../lib")  # noqa: F821
