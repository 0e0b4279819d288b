"""One exception for the field kit: what went wrong and what the technician does next."""

from __future__ import annotations


class FieldError(Exception):
    """``problem``: what was found; ``next_step``: what to do about it; ``exit_code``: the CLI's."""

    def __init__(self, problem: str, next_step: str, exit_code: int = 1) -> None:
        super().__init__(f"{problem}\n  next: {next_step}")
        self.problem = problem
        self.next_step = next_step
        self.exit_code = exit_code
