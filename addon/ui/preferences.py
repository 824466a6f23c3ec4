"""Add-on preferences: where the server is, how to start a local one, how long to wait."""
from types import SimpleNamespace

import bpy
from bpy.props import EnumProperty, FloatProperty, StringProperty

from ..server.process import find_home
from ..wire.client import DEFAULT_ADDRESS

_DEVICES = (("auto", "Auto", "CUDA when the server's torch sees a GPU, else CPU"),
            ("cpu", "CPU", "Always the CPU"),
            ("cuda", "CUDA", "The first CUDA GPU (fails to start without one)"))
_TORCH_BUILDS = (("cpu", "CPU", "Runs everywhere; the smaller download"),
                 ("cuda", "CUDA", "For an NVIDIA GPU (needs its driver); a download of several GB"))
ADDON_PACKAGE = __package__.rpartition(".")[0]  # Blender keys preferences by the add-on's package: ui/'s parent


SECTIONS: list = []  # draw(layout, prefs) functions other modules add (ui/setup.py: the server environment)


class FACEFORGE_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    server_address: StringProperty(name="Server Address", default=DEFAULT_ADDRESS,
                                    description="ZeroMQ address of the FaceForge inference server")
    server_public_key: StringProperty(name="Server Public Key", subtype="FILE_PATH", default="",
                                      description="A remote server's public key file (SERVER.key): CURVE "
                                                  "authentication and encryption. Empty for a local server")
    client_key_pair: StringProperty(name="Own Key Pair", subtype="FILE_PATH", default="",
                                    description="This workstation's key pair (NAME.key_secret, from `python -m "
                                                "inference_server keys generate`); the server must list NAME.key")
    request_timeout: FloatProperty(name="Request Timeout", default=120.0, min=1.0, max=3600.0, subtype="TIME_ABSOLUTE",
                                   unit="TIME_ABSOLUTE", description="Seconds to wait for one reconstruction")
    python_path: StringProperty(name="Python", subtype="FILE_PATH", default="",
                                description="Interpreter with the server's dependencies (torch...). Empty: "
                                            "$FACEFORGE_PYTHON, else the server directory's .venv, else "
                                            "Blender's own Python if it has torch")
    server_home: StringProperty(name="Server Directory", subtype="DIR_PATH", default=find_home(),
                                description="Directory containing the inference_server package (the FaceForge "
                                            "checkout). Default: $FACEFORGE_HOME, else the add-on's own checkout")
    device: EnumProperty(name="Device", items=_DEVICES, default="auto", description="Device of a local server")
    base_python: StringProperty(name="Base Python", subtype="FILE_PATH", default="",
                                description="Python 3.11-3.13 that Install Server makes the server's own environment "
                                            "from. Empty: found on this computer")
    torch_build: EnumProperty(name="Torch", items=_TORCH_BUILDS, default="cpu",
                              description="Which build of PyTorch Install Server puts in the server's environment")
    wheel_folder: StringProperty(name="Wheel Folder", subtype="DIR_PATH", default="",
                                 description="Offline install: take every package from this folder (made with "
                                             "scripts/server_bundle.py) instead of the internet")
    package_index: StringProperty(name="Package Index", default="",
                                  description="A PyPI mirror or proxy address for Install Server. Empty: PyPI, or "
                                              "what pip's own configuration says")
    model_source: StringProperty(name="Head Model From", default="",
                                 description="Where Download Head Model takes ICT-FaceKit from: empty for its pinned "
                                             "GitHub archive, an http(s) mirror, or a downloaded zip or folder")
    start_timeout: FloatProperty(name="Start Timeout", default=120.0, min=5.0, max=1800.0, subtype="TIME_ABSOLUTE",
                                 unit="TIME_ABSOLUTE", description="Seconds a local server may take to load its models")

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        column = layout.column(heading="Server")
        column.prop(self, "server_address")
        column.prop(self, "server_public_key")
        column.prop(self, "client_key_pair")
        column.prop(self, "request_timeout")
        for section in SECTIONS:
            section(layout, self)
        column = layout.column(heading="Local Server")
        column.prop(self, "python_path")
        column.prop(self, "server_home")
        column.prop(self, "device")
        column.prop(self, "start_timeout")


def get(context) -> "FACEFORGE_AP_preferences | SimpleNamespace":
    """The preferences, or ``DEFAULTS`` when the package runs without being enabled as an add-on (tests, scripts)."""
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    return addon.preferences if addon is not None else DEFAULTS


# Stand-in preferences for a package registered by hand (``addon.register()``); scripts may edit them.
DEFAULTS = SimpleNamespace(**{name: prop.keywords["default"]
                              for name, prop in FACEFORGE_AP_preferences.__annotations__.items()})

classes = (FACEFORGE_AP_preferences,)
register, unregister = bpy.utils.register_classes_factory(classes)
