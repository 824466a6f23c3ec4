"""The headless batch: folders of photos -> .blend / .glb / .obj / .ply / .stl, one folder per photo.

    blender -b --python-exit-code 1 -P scripts/batch.py -- --input PHOTO_OR_DIR [...] --output DIR ...
    .venv/bin/python scripts/batch.py -- ...          (the same with ``bpy`` from PyPI)

The add-on's own building code (``addon.scene.build.build_reconstruction``) run without a window, in
Blender 3.4 through 5.0 or the ``bpy`` module, with nothing but numpy and pyzmq besides. Modules:
``cli`` (command line, from the option schema), ``run`` (plan, server, process, finish: ``main``),
``window`` (requests in flight), ``writer`` (one reply -> objects -> files), ``outputs`` (photos,
output folders, resume), ``report`` (per-photo reports, summary, progress line) and ``blender``
(scene reset, exporters). Only ``writer`` and ``blender`` touch bpy, and only when a run starts.
"""
