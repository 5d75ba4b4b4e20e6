"""Where the files shipped beside the code live: the card template and the remote modeling code."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def templates_dir() -> Path:
    """``templates/`` beside the package (a source checkout or editable install), or
    ``hubprune/templates`` inside it (a wheel installs it there)."""
    for folder in (_HERE.parent / "templates", _HERE / "templates"):
        if (folder / "remote").is_dir():
            return folder
    raise FileNotFoundError(f"cannot find hubprune's templates/ folder next to {_HERE}")
