"""The server from the add-on's side (bpy-free): start and stop a local server process, the worker
threads that own the ZeroMQ clients and hand back futures, and pyzmq for the legacy zip."""
