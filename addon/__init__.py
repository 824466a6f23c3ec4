"""FaceForge for Blender: one photo -> textured 3D face mesh.

One package, two installs: the extension zip (Blender 4.2+, manifest at the zip's root) and the
legacy add-on zip (Blender 3.6-4.1, ``bl_info`` added by scripts/build_extension.py).

Importable without bpy: the inference server and the batch script import ``addon.wire`` and
``addon.server.process``; the bpy modules are imported only by ``register``/``unregister``.
"""
_MODULES = ("ui.properties", "ui.preferences", "ui.operators", "ui.panels", "ui.setup")


def _bpy_modules():
    import importlib

    return [importlib.import_module(f".{name}", __package__) for name in _MODULES]


def register() -> None:
    from .server import pyzmq_bundle

    pyzmq_bundle.ensure_pyzmq()  # before any module that imports zmq
    for module in _bpy_modules():
        module.register()


def unregister() -> None:
    for module in reversed(_bpy_modules()):
        module.unregister()
