"""Making file-system changes durable (POSIX: a rename is durable once its folder is fsynced)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries just created or renamed in ``path`` durable (until then they live in memory only)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
