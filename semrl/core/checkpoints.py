"""Resumable training: the last complete checkpoint a killed run left behind, and the identity of a model
folder that keys checkpoints (never resume onto another starting model)."""
from __future__ import annotations

import hashlib
import json
import re
import struct
import sys
from pathlib import Path


def model_identity(path: Path) -> str:
    """What a model folder is, independent of where it lies and when it was written (DVC checks outputs out
    as fresh copies, so names, sizes and mtimes would not do): a pipeline output's own inputs key, else a
    hash of the folder's files; a hub name as itself (the hub's revision pins it)."""
    from semrl.core.artifacts import INPUTS_FILE

    path = Path(path)
    if (path.parent / INPUTS_FILE).is_file():
        return "inputs:" + json.loads((path.parent / INPUTS_FILE).read_text(encoding="utf-8"))["key"]
    if not path.is_dir():
        return str(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes() + b"\0")
    return "sha256:" + h.hexdigest()[:16]


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The newest `checkpoint-N` that is whole: trainer_state.json (the Trainer writes it after the weights,
    optimizer, scheduler and RNG state) parses and names step N, and every safetensors file in it has a
    readable header and the length that header promises. A run killed while saving leaves a newer, partial
    folder, and a disk can truncate or corrupt one: those are skipped (with a warning) for the one before."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    for step, path in sorted(found, reverse=True):
        if problem := checkpoint_problem(path, step):
            print(f"warning: skipping {path}: {problem}", file=sys.stderr)
            continue
        return str(path)
    return None


def checkpoint_problem(path: Path, step: int) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None."""
    state = path / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json (saving was interrupted)"
    try:
        if int(json.loads(state.read_text(encoding="utf-8"))["global_step"]) != step:
            return "trainer_state.json names another step"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "trainer_state.json is truncated or corrupt"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no weights (*.safetensors)"
    for f in weights:
        if problem := safetensors_problem(f):
            return problem
    return None


def safetensors_problem(path: Path) -> str | None:
    """Whether a safetensors file is whole, from its header alone: 8 bytes of header length, a JSON header,
    and data as long as the header's offsets say."""
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return f"{path.name} is truncated (no header)"
            n = struct.unpack("<Q", raw)[0]
            if n > 100_000_000:
                return f"{path.name} is corrupt (header length {n})"
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if path.stat().st_size < 8 + n + end:
            return f"{path.name} is truncated ({path.stat().st_size} of {8 + n + end} bytes)"
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        return f"{path.name} is unreadable ({e.__class__.__name__})"
    return None


def step_of(checkpoint: str | None) -> int:
    return int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0


def require_whole_model(path: str | Path, stage: str) -> None:
    """Refuse a damaged model folder with a message, not a loader's traceback: every JSON file parses and
    every safetensors file is whole. `stage` is the DVC stage that makes it (to restore or rebuild it)."""
    from semrl import SemrlError

    path = Path(path)
    problems = []
    for f in sorted(path.rglob("*.json")):
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            problems.append(f"{f.relative_to(path)} is truncated or corrupt")
    problems += [p for f in sorted(path.rglob("*.safetensors")) if (p := safetensors_problem(f))]
    if problems:
        raise SemrlError(f"{path}: damaged model folder ({'; '.join(problems[:3])}); restore it with "
                         f"`dvc checkout {path}` or rebuild it with `dvc repro --force {stage}`")
