"""The one folder FaceForge keeps the user's models in: ``$FACEFORGE_DATA``, else the OS's per-user
data folder (platformdirs, e.g. ``~/.local/share/FaceForge``). Each model kind has a subfolder."""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def data_dir() -> Path:
    return Path(os.environ.get("FACEFORGE_DATA") or platformdirs.user_data_dir("FaceForge"))
