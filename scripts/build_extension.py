"""Build the Blender installs: dist/faceforge-<version>.zip and dist/faceforge-<version>-legacy.zip.

One manifest, blender_manifest.toml at the repository root, describes both:

- the extension (Blender 4.2-5.x): addon/'s files with the manifest beside them at the zip's root,
  plus the pyzmq wheels the manifest declares (Blender installs them);
- the legacy add-on (Blender 3.6-4.1, Preferences > Add-ons > Install): addon/ as ``faceforge/``,
  ``bl_info`` derived from the manifest, and the same wheels for Python 3.10 and 3.11 unpacked into
  ``faceforge/_pyzmq/`` (used only when Blender's Python has no pyzmq: addon/server/pyzmq_bundle.py).

Wheels come from the cache (build/wheels) or are fetched with
``pip download --only-binary=:all: --no-deps --python-version X.Y --platform TAG pyzmq==VERSION``.

    python scripts/build_extension.py [--output DIR] [--wheels DIR] [--offline]
"""
from __future__ import annotations

import argparse
import importlib.util
import pprint
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addon"
MANIFEST = ROOT / "blender_manifest.toml"
EXCLUDED_DIRS = {"__pycache__", "wheels", "_pyzmq", "server_wheel"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo"}
SERVER_FILES = ("pyproject.toml", "README.md", "requirements.txt")  # what the server's wheel is built from
SERVER_PACKAGES = ("addon", "inference_server")
LEGACY_PACKAGE = "faceforge"         # the legacy add-on's module name (the extension's is bl_ext.<repo>.<id>)
LEGACY_BLENDER_MIN = (3, 6, 0)
LEGACY_PYTHONS = ("cp310", "cp311")  # Blender 3.6 and 4.0 bundle Python 3.10, 4.1 bundles 3.11

_SPEC = importlib.util.spec_from_file_location("pyzmq_bundle", ADDON / "server" / "pyzmq_bundle.py")
pyzmq_bundle = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(pyzmq_bundle)


def load_manifest(path: Path = MANIFEST) -> dict:
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def wheel_request(filename: str) -> tuple[str, str, str]:
    """(project, version, first platform tag) from a wheel file name (PEP 427)."""
    parts = filename[:-len(".whl")].split("-")
    if len(parts) != 5:
        raise ValueError(f"not a plain wheel file name: {filename}")
    project, version, _python, _abi, platforms = parts
    return project, version, platforms.split(".")[0]


def fetch_wheels(filenames: list[str], cache: Path, offline: bool = False) -> list[Path]:
    """These wheel files from ``cache``, downloading the missing ones into it."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename in filenames:
        target = cache / filename
        if not target.exists():
            if offline:
                raise SystemExit(f"error: {filename} is not in {cache} and --offline forbids downloading it")
            project, version, platform = wheel_request(filename)
            python = filename.split("-")[2]  # cp311 -> 3.11
            subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
                            "--python-version", f"{python[2]}.{python[3:]}", "--platform", platform,
                            f"{project}=={version}", "--dest", str(cache), "--quiet"], check=True)
            if not target.exists():
                raise SystemExit(f"error: pip did not produce {filename}; update the manifest's wheels list")
        paths.append(target)
    return paths


def legacy_wheel_names(manifest: dict) -> list[str]:
    """The manifest's wheels, once per Python of the Blender versions the legacy zip serves."""
    names = []
    for entry in manifest.get("wheels", []):
        name = Path(entry).name
        tag = name.split("-")[2]
        names += [name.replace(f"-{tag}-{tag}-", f"-{python}-{python}-") for python in LEGACY_PYTHONS]
    return names


def bl_info(manifest: dict) -> dict:
    """What Blender before 4.2 reads instead of the manifest."""
    return {"name": manifest["name"], "author": manifest["maintainer"], "description": manifest["tagline"],
            "version": tuple(int(part) for part in manifest["version"].split(".")), "blender": LEGACY_BLENDER_MIN,
            "location": "3D Viewport > Sidebar (N) > FaceForge", "category": manifest["tags"][0]}


def addon_files() -> list[Path]:
    files = []
    for path in sorted(ADDON.rglob("*")):
        relative = path.relative_to(ADDON)
        if path.is_file() and not EXCLUDED_DIRS & set(relative.parts[:-1]) and path.suffix not in EXCLUDED_SUFFIXES:
            files.append(path)
    return files


def _written(target: Path, fill) -> Path:
    """Write the zip under a temporary name, so a failed build never leaves a zip that looks complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".zip.part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        fill(archive)
    partial.replace(target)
    return target


def server_wheel(folder: Path) -> Path:
    """The server as a wheel (``pip wheel`` of this checkout), for Install Server to put in its own environment:
    the add-on and the server it installs are then always the same version."""
    source = folder / "source"  # a copy: setuptools leaves build/ and egg-info in the tree it builds, and
    source.mkdir(parents=True)  # reuses a stale build/lib
    for name in SERVER_FILES:
        shutil.copy(ROOT / name, source / name)
    for package in SERVER_PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", *isolation, "--wheel-dir",
                    str(folder), "--quiet"], check=True)
    shutil.rmtree(source)
    (wheel,) = folder.glob("faceforge-*.whl")
    return wheel


def _add_server_wheel(archive: zipfile.ZipFile, prefix: str) -> None:
    """``server_wheel/`` in the add-on: not one of the manifest's wheels, which Blender would install into its own
    Python; addon/server/installer.py installs it into the server's environment."""
    with tempfile.TemporaryDirectory() as scratch:
        wheel = server_wheel(Path(scratch))
        archive.write(wheel, f"{prefix}server_wheel/{wheel.name}", compress_type=zipfile.ZIP_STORED)


def build(output: Path = ROOT / "dist", cache: Path = ROOT / "build" / "wheels", offline: bool = False) -> Path:
    """The extension zip: the manifest and addon/'s files at its root, the declared wheels under wheels/."""
    manifest = load_manifest()
    wheels = fetch_wheels([Path(entry).name for entry in manifest.get("wheels", [])], cache, offline)

    def fill(archive: zipfile.ZipFile) -> None:
        archive.write(MANIFEST, MANIFEST.name)
        for path in addon_files():
            archive.write(path, path.relative_to(ADDON).as_posix())
        for wheel in wheels:
            archive.write(wheel, f"wheels/{wheel.name}", compress_type=zipfile.ZIP_STORED)  # already compressed
        _add_server_wheel(archive, "")

    return _written(output / f"{manifest['id']}-{manifest['version']}.zip", fill)


def build_legacy(output: Path = ROOT / "dist", cache: Path = ROOT / "build" / "wheels", offline: bool = False) -> Path:
    """The legacy add-on zip: ``faceforge/`` with bl_info and pyzmq unpacked per Python and platform."""
    manifest = load_manifest()
    wheels = fetch_wheels(legacy_wheel_names(manifest), cache, offline)

    def fill(archive: zipfile.ZipFile) -> None:
        for path in addon_files():
            name = f"{LEGACY_PACKAGE}/{path.relative_to(ADDON).as_posix()}"
            if name == f"{LEGACY_PACKAGE}/__init__.py":
                archive.writestr(name, path.read_text() + "\n\n# Written by scripts/build_extension.py: Blender "
                                 "before 4.2 reads this instead of blender_manifest.toml.\nbl_info = "
                                 + pprint.pformat(bl_info(manifest), sort_dicts=False) + "\n")
            else:
                archive.write(path, name)
        for wheel in wheels:
            folder = f"{LEGACY_PACKAGE}/_pyzmq/{pyzmq_bundle.wheel_key(wheel.name)}"
            with zipfile.ZipFile(wheel) as unpacked:
                for member in unpacked.infolist():
                    if not member.is_dir():
                        archive.writestr(f"{folder}/{member.filename}", unpacked.read(member))
        _add_server_wheel(archive, f"{LEGACY_PACKAGE}/")

    return _written(output / f"{manifest['id']}-{manifest['version']}-legacy.zip", fill)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "dist", help="directory for the zips (default dist/)")
    parser.add_argument("--wheels", type=Path, default=ROOT / "build" / "wheels", help="wheel cache (default build/wheels)")
    parser.add_argument("--offline", action="store_true", help="fail instead of downloading missing wheels")
    args = parser.parse_args(argv)
    print(build(args.output, args.wheels, args.offline))
    print(build_legacy(args.output, args.wheels, args.offline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
