"""Resume from the last checkpoint that was completely written."""

import json
import re
from pathlib import Path

_STEP = re.compile(r"^checkpoint-(\d+)$")


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest `checkpoint-N` folder whose `trainer_state.json` (written last by the Trainer) parses;
    a run killed while saving leaves a partial folder, which is skipped."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    candidates = sorted(
        (int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP.match(p.name))
    )
    for _, path in reversed(candidates):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(path)
    return None


def resolve_resume(resume: str | bool | None, output_dir: str | Path) -> str | None:
    """`--resume_from_checkpoint` value -> checkpoint path: "true"/"last" pick the last complete checkpoint."""
    if resume is None or resume is False or str(resume).lower() in ("", "false", "none"):
        return None
    if resume is True or str(resume).lower() in ("true", "last"):
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no complete checkpoint in {output_dir}")
        return found
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    return str(resume)
