"""FaceForge Blender extension: one photo -> textured 3D face mesh.

Importable without bpy: the inference server and the batch script import ``addon.wire`` and
``addon.server_process``; the bpy modules are imported only by ``register``/``unregister``.
"""
_MODULES = ("properties", "preferences", "operators", "panels")


def _bpy_modules():
    import importlib

    return [importlib.import_module(f".{name}", __package__) for name in _MODULES]


def register() -> None:
    for module in _bpy_modules():
        module.register()


def unregister() -> None:
    for module in reversed(_bpy_modules()):
        module.unregister()
