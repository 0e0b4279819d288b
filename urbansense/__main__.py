import sys

from urbansense.cli import main

sys.exit(main())
