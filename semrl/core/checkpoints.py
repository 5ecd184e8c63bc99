"""Resumable training: the last complete checkpoint a killed run left behind, and the identity of a model
folder that keys checkpoints (never resume onto another starting model)."""
from __future__ import annotations

import re
from pathlib import Path


def folder_fingerprint(path: Path) -> str:
    """Cheap identity of a model folder (names, sizes, mtimes)."""
    if not path.is_dir():
        return str(path)
    files = sorted(p for p in path.iterdir() if p.is_file())
    return ";".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The newest `checkpoint-N` holding trainer_state.json, which the Trainer writes after the weights,
    optimizer, scheduler and RNG state: a run killed while saving leaves a newer, partial folder that
    must not be resumed from."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    for _, path in sorted(found, reverse=True):
        if (path / "trainer_state.json").is_file():
            return str(path)
    return None


def step_of(checkpoint: str | None) -> int:
    return int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0
