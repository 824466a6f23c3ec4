"""Launcher of the headless batch (``addon.batch``); see ``--help`` and scripts/README.md.

    blender -b --python-exit-code 1 -P scripts/batch.py -- --input PHOTO_OR_DIR [...] --output DIR [...]
    .venv/bin/python scripts/batch.py -- ...
"""
import sys
from pathlib import Path

# Blender's Python knows nothing of this checkout: put its root first, so this checkout's add-on runs.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from addon.batch.run import main  # noqa: E402

if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.exit(main(sys.argv))
