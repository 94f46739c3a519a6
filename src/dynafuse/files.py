"""Atomic writes: a reader never sees half a file, and a kill never leaves one behind."""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from .errors import DynafuseError


def safe_name(name: str) -> str:
    """A dataset name (possibly FORMAT:PATH) as one file or folder name component."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, then rename over `path` (atomic on POSIX within one filesystem).

    The temporary file sits beside `path` and is removed on any failure, so nothing half-written is left. A full
    disk or a permission problem is a DynafuseError naming `path` (not the temporary file)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise DynafuseError(f"cannot write here ({e.strerror or e})", path) from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except OSError as e:
        raise DynafuseError(f"could not write it ({e.strerror or e}); nothing was changed", path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_csv(path: str | Path, rows: Iterable[Mapping | Sequence], fieldnames: Sequence[str] | None = None,
                     *, lineterminator: str = "\r\n") -> Path:
    """Write a CSV file atomically with the csv module, straight into the temporary file.

    `rows` are either dicts, written under the columns `fieldnames` (default: every key, in the order first seen;
    a missing key is a blank cell, a key outside `fieldnames` is left out), or sequences, written as they are
    below the header `fieldnames` (none when it is None). `lineterminator` is the csv module's ("\\r\\n", as
    RFC 4180); pass "\\n" for plain line ends.
    """
    rows = list(rows)
    as_dicts = bool(rows) and isinstance(rows[0], Mapping)
    if as_dicts and fieldnames is None:
        fieldnames = list(dict.fromkeys(k for r in rows for k in r))

    def write(p: Path) -> None:
        with open(p, "w", newline="", encoding="utf-8") as f:
            if as_dicts:
                w = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore", lineterminator=lineterminator)
                w.writeheader()
            else:
                w = csv.writer(f, lineterminator=lineterminator)
                if fieldnames is not None:
                    w.writerow(fieldnames)
            w.writerows(rows)

    return atomic_write(path, write)


def atomic_save_npy(path: str | Path, array) -> Path:
    import numpy as np

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.save(f, array)

    return atomic_write(path, write)

