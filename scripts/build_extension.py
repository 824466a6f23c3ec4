"""Build the installable Blender extension: dist/faceforge-<version>.zip.

The zip holds addon/ (manifest at its root, no tests, no caches) plus the pyzmq wheels that
addon/blender_manifest.toml declares. The manifest is the single source of truth: each declared
wheel is taken from the cache (build/wheels) or fetched with
``pip download --only-binary=:all: --no-deps --python-version 3.11 --platform TAG pyzmq==VERSION``.

    python scripts/build_extension.py [--output DIR] [--wheels DIR] [--offline]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addon"
EXCLUDED_DIRS = {"__pycache__", "wheels"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo"}


def load_manifest(path: Path = ADDON / "blender_manifest.toml") -> dict:
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def wheel_request(filename: str) -> tuple[str, str, str]:
    """(project, version, first platform tag) from a wheel file name (PEP 427)."""
    parts = filename[:-len(".whl")].split("-")
    if len(parts) != 5:
        raise ValueError(f"not a plain wheel file name: {filename}")
    project, version, _python, _abi, platforms = parts
    return project, version, platforms.split(".")[0]


def fetch_wheels(manifest: dict, cache: Path, offline: bool = False) -> list[Path]:
    """Every wheel the manifest declares, downloading the missing ones into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in manifest.get("wheels", []):
        filename = Path(entry).name
        target = cache / filename
        if not target.exists():
            if offline:
                raise SystemExit(f"error: {filename} is not in {cache} and --offline forbids downloading it")
            project, version, platform = wheel_request(filename)
            subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps",
                            "--python-version", "3.11", "--platform", platform, f"{project}=={version}",
                            "--dest", str(cache), "--quiet"], check=True)
            if not target.exists():
                raise SystemExit(f"error: pip did not produce {filename}; update the manifest's wheels list")
        paths.append(target)
    return paths


def addon_files() -> list[Path]:
    files = []
    for path in sorted(ADDON.rglob("*")):
        relative = path.relative_to(ADDON)
        if path.is_file() and not EXCLUDED_DIRS & set(relative.parts[:-1]) and path.suffix not in EXCLUDED_SUFFIXES:
            files.append(path)
    return files


def build(output: Path = ROOT / "dist", cache: Path = ROOT / "build" / "wheels", offline: bool = False) -> Path:
    manifest = load_manifest()
    wheels = fetch_wheels(manifest, cache, offline)
    output.mkdir(parents=True, exist_ok=True)
    target = output / f"{manifest['id']}-{manifest['version']}.zip"
    partial = target.with_suffix(".zip.part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in addon_files():
            archive.write(path, path.relative_to(ADDON).as_posix())
        for wheel in wheels:
            archive.write(wheel, f"wheels/{wheel.name}", compress_type=zipfile.ZIP_STORED)  # already compressed
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "dist", help="directory for the zip (default dist/)")
    parser.add_argument("--wheels", type=Path, default=ROOT / "build" / "wheels", help="wheel cache (default build/wheels)")
    parser.add_argument("--offline", action="store_true", help="fail instead of downloading missing wheels")
    args = parser.parse_args(argv)
    print(build(args.output, args.wheels, args.offline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
