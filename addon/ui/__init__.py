"""The panel (bpy): per-scene settings, add-on preferences, the operators and the sidebar tab.
The only layer that registers Blender classes; ``addon.register`` imports it, nothing else does."""
