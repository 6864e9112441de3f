"""Why a `zenml pipeline run` failed, from its output: for the schedule's log and the test
sandbox."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KEYS = ("Failed to run step", "Error", "error:", "Exception", "failed", "raise ", "  - expect_")


class RunFailed(RuntimeError):
    """A `zenml pipeline run` a command started failed; the message has the lines that say why."""


def failure_lines(output: str, limit: int = 60) -> str:
    """The lines that say why a run failed (the step's error, each failed expectation, the
    exception lines of its traceback), without colour codes or the framed source listings of rich
    tracebacks; the plain tail of the output if none is found."""
    lines = [_ANSI.sub("", line) for line in output.splitlines()]
    keep = [
        ln
        for ln in lines
        if not ln.lstrip().startswith(("│", "╭", "╰")) and any(k in ln for k in _KEYS)
    ]
    return "\n".join(keep[-limit:]) if keep else "\n".join(lines)[-4000:]
