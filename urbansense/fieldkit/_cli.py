"""What every field-kit command shares: FieldError -> a message with the next step, exit codes.

Exit codes: 0 done; 1 the board, cable or gateway did not do what was asked (retry after
the next step); 2 the command or a setting is wrong (change it); 3 timed out waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from urbansense.fieldkit._errors import FieldError

Handler = Callable[[argparse.Namespace], int]


def guarded(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except FieldError as exc:
            if getattr(args, "json", False):
                print(json.dumps({"ok": False, "error": exc.problem, "next": exc.next_step}))
            else:
                print(f"error: {exc.problem}\n  next: {exc.next_step}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("interrupted; run the same command again to resume", file=sys.stderr)
            return 130

    return run


def emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    print(json.dumps(result) if getattr(args, "json", False) else text)
