"""Writing result files safely: all or nothing, and never over a file by accident."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict], overwrite: bool = False) -> None:
    """Write `rows` as JSON lines. The file appears whole or not at all (written beside,
    then renamed), and an existing file is kept unless `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another --output or pass --overwrite")
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(partial, path)
