"""One error type for everything a user can get wrong: it names the file and the problem."""

from __future__ import annotations

import sys


class DynafuseError(Exception):
    """A user-facing error. The CLI prints it as one line, without a traceback."""

    def __init__(self, problem: str, path: object | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class DataError(DynafuseError):
    """Bad input data: missing, truncated, malformed or non-finite."""


class ConfigError(DynafuseError):
    """A configuration that cannot work (unknown name, wrong key, mismatched checkpoint)."""


def first_line(e: BaseException, width: int = 120) -> str:
    """An exception's first line, at most `width` characters (torch's and Ray's messages run to paragraphs); the
    exception's type name when its message is empty."""
    line = next(iter(str(e).splitlines()), "").strip() or type(e).__name__
    return line if len(line) <= width else line[:width - 3] + "..."


def warn(problem: str, path: object | None = None) -> None:
    """One warning line on stderr (`dynafuse: warning: PATH: problem`) for bad input that was skipped or repaired:
    the command goes on and the user sees what it did."""
    print(f"dynafuse: warning: {f'{path}: ' if path is not None else ''}{problem}", file=sys.stderr)


def run_script(main) -> None:
    """Call a script's `main()` with the CLI's error handling: a DynafuseError is one line `SCRIPT: error: PATH:
    problem` on stderr and exit status 2, without a traceback (scripts/*.py)."""
    try:
        main()
    except DynafuseError as e:
        print(f"{sys.argv[0].rsplit('/', 1)[-1]}: error: {e}", file=sys.stderr)
        sys.exit(2)
