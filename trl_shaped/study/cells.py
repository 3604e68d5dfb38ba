"""Where a study keeps a cell and how a cell's files are written: shared by the runner and the built-in cell.

<output_dir>/cells/<preset>/seed<k>/result.json    a finished cell: written atomically, last
"""

import json
import os
from pathlib import Path

RESULT = "result.json"


def say(tag: str, message: str) -> None:
    """One progress line of the study (`tag` "study") or of a cell ("cell"), flushed at once: cells run as child
    processes whose output is interleaved line by line."""
    print(f"[{tag}] {message}", flush=True)


def write_json_atomic(path: Path, obj) -> None:
    """Write `obj` as JSON so that `path` either does not exist or is complete (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def newest_checkpoint(folder: Path) -> str | None:
    """The `checkpoint-<step>` folder of `folder` with the highest step that has a `trainer_state.json` (a
    checkpoint interrupted while saving has none), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if p.name[11:].isdigit() and (p / "trainer_state.json").is_file()]
    return str(max(done, key=lambda p: int(p.name[11:]))) if done else None


def cell_dir(out: Path, preset: str, seed: int) -> Path:
    return Path(out) / "cells" / preset / f"seed{seed}"
