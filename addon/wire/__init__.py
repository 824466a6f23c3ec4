"""bpy-free, torch-free wire layer: the protocol definition and the client (numpy + pyzmq only)."""
