"""File writers: binary glTF (``glb``, bpy-free) from object arrays (``surfaces``), and FBX/OBJ of
heads through Blender's own exporters (``head_export``)."""
