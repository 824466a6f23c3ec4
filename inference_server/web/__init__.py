"""A web page for the reconstruction (``python -m inference_server web``): upload photos, watch the
server's progress, turn the textured head in the browser, move its expressions, download the files.
``app`` is the HTTP side, ``builder`` the Blender-side child process, ``jobs`` who owns which result."""
