"""Replies and photos as plain arrays (bpy-free, numpy only): what Blender's ``foreach_set`` wants,
checked before any datablock is made, and the photo bytes a request carries. Unit-tested without Blender."""
