"""Helpers for the batch tests (``addon.batch`` through ``scripts/batch.py``): running the batch and
reading its outputs back.

Imported by tests/test_batch*.py (``from tests.batch_fixtures import ...``); the photo folders are in
tests/photo_fixtures.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from addon.writers import glb
from addon.batch import cli

REPO = Path(__file__).resolve().parents[1]
BATCH = REPO / "scripts" / "batch.py"
BLENDER = shutil.which("blender") or "/usr/bin/blender"

needs_blender = pytest.mark.skipif(not Path(BLENDER).exists(),
                                   reason=f"the Blender binary is not installed ({BLENDER}); "
                                          "CI installs Debian's blender + python3-zmq + python3-numpy")


def _has_bpy() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("bpy") is not None
    except (ImportError, ValueError):
        return False


needs_bpy = pytest.mark.skipif(not _has_bpy(), reason="bpy (from PyPI) is not installed in this Python")


def blender_command(*args: str) -> list:
    return [BLENDER, "-b", "--factory-startup", "--python-exit-code", "1", "-P", str(BATCH), "--", *args]


def python_command(*args: str) -> list:
    return [sys.executable, str(BATCH), "--", *args]


def run_batch(command: list, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)
    # Shown by pytest only when the test fails.
    print("$", " ".join(command), "\n--- stdout ---\n", result.stdout[-6000:], "\n--- stderr ---\n", result.stderr[-6000:])
    return result


def start_until_ready(command: list, timeout: float = 300) -> tuple:
    """A batch as a child process, its stdout read up to the line saying its server is ready (or the
    timeout); returns ``(process, lines read)``. The process is killed if reading fails."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = []
    try:
        deadline = time.monotonic() + timeout
        for line in process.stdout:
            lines.append(line)
            if " ready " in line or time.monotonic() > deadline:
                break
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, lines


def interrupt(process, lines: list, output: Path, timeout: float) -> dict:
    """Ctrl-C a batch started by ``start_until_ready``: it exits 130, its summary says it was
    interrupted and unfinished, and the server it started is gone. Returns the summary."""
    from addon.server.process import tcp_in_use
    from addon.wire.errors import Exit

    try:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == Exit.INTERRUPTED, "".join(lines) + rest
    summary = load_summary(output)
    assert summary["run"]["interrupted"] and not summary["finished"]
    assert not tcp_in_use(summary["run"]["server"])
    return summary


def load_summary(output: Path) -> dict:
    return json.loads((output / cli.SUMMARY).read_text())


def by_key(summary: dict) -> dict:
    return {entry["key"]: entry for entry in summary["photos"]}


_INSPECT = r"""
import json, sys, bpy
path = sys.argv[sys.argv.index("--") + 1]
bpy.ops.wm.open_mainfile(filepath=path)
objects = []
for obj in bpy.data.objects:
    if obj.type != "MESH":
        continue
    deps = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(deps).to_mesh()
    objects.append({"name": obj.name, "vertices": len(obj.data.vertices), "polygons": len(obj.data.polygons),
                    "evaluated_vertices": len(evaluated.vertices),
                    "modifiers": [m.type for m in obj.modifiers],
                    "materials": [m.name for m in obj.data.materials if m],
                    "uv_layers": [uv.name for uv in obj.data.uv_layers],
                    "has_faceforge_prop": "faceforge" in obj.keys(),
                    "metadata": {k: v for k, v in (obj["faceforge"].to_dict() if "faceforge" in obj.keys() else {}).items()
                                 if isinstance(v, (int, float, str))},
                    "location": list(obj.location)})
    obj.evaluated_get(deps).to_mesh_clear()
images = [{"name": im.name, "packed": im.packed_file is not None, "size": list(im.size)}
          for im in bpy.data.images if im.source != "VIEWER"]
print("INSPECT" + json.dumps({"version": list(bpy.app.version), "objects": objects, "images": images,
                              "scenes": len(bpy.data.scenes)}))
"""


def inspect_blend(path: Path, *, blender: str | None = BLENDER, timeout: float = 180) -> dict:
    """Open a .blend in a separate Blender (the binary, or ``blender=None`` for bpy in this venv)
    and describe its mesh objects, modifiers and images."""
    script = Path(path).with_name("_inspect_blend.py")
    script.write_text(_INSPECT)
    try:
        if blender is None:
            command = [sys.executable, str(script), "--", str(path)]
        else:
            command = [blender, "-b", "--factory-startup", "--python-exit-code", "1", "-P", str(script), "--", str(path)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    finally:
        script.unlink(missing_ok=True)
    line = next((l for l in result.stdout.splitlines() if l.startswith("INSPECT")), None)
    assert result.returncode == 0 and line, f"inspecting {path} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return json.loads(line[len("INSPECT"):])


def glb_summary(path: Path) -> dict:
    """Parse a .glb ourselves: header, JSON chunk, embedded images (PNG/JPEG magic), accessor counts."""
    document, binary = glb.read_glb(path)
    views = document.get("bufferViews", [])
    images = []
    for image in document.get("images", []):
        assert "bufferView" in image, "texture is not embedded in the .glb"
        view = views[image["bufferView"]]
        start = view.get("byteOffset", 0)
        blob = binary[start:start + view["byteLength"]]
        images.append({"mime": image.get("mimeType"), "png": blob[:8] == b"\x89PNG\r\n\x1a\n",
                       "jpeg": blob[:2] == b"\xff\xd8", "bytes": len(blob)})
    positions = []
    for mesh in document.get("meshes", []):
        for primitive in mesh["primitives"]:
            accessor = document["accessors"][primitive["attributes"]["POSITION"]]
            positions.append({"count": accessor["count"], "min": accessor.get("min"), "max": accessor.get("max"),
                              "has_uv": "TEXCOORD_0" in primitive["attributes"], "material": primitive.get("material")})
    return {"meshes": len(document.get("meshes", [])), "nodes": [n.get("name") for n in document.get("nodes", [])],
            "images": images, "primitives": positions, "materials": len(document.get("materials", [])),
            "textures": len(document.get("textures", []))}


def stl_summary(path: Path) -> dict:
    """Binary STL: triangle count (checked against the file size) and the bounding box."""
    import numpy as np

    data = Path(path).read_bytes()
    (count,) = struct.unpack_from("<I", data, 80)
    assert len(data) == 84 + 50 * count, "binary STL size does not match its triangle count"
    records = np.frombuffer(data, dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]),
                            count=count, offset=84)
    points = records["v"].reshape(-1, 3)
    return {"triangles": count, "min": points.min(0).tolist(), "max": points.max(0).tolist(),
            "size": (points.max(0) - points.min(0)).tolist()}


def ply_header(path: Path) -> list:
    lines = []
    with open(path, "rb") as handle:
        for raw in handle:
            line = raw.decode("ascii", "replace").strip()
            lines.append(line)
            if line == "end_header" or len(lines) > 64:
                break
    return lines
