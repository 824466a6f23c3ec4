"""FaceForge inference server: single photo -> textured face mesh, served over ZeroMQ.

Importing this package is cheap; torch and the models load only when a pipeline is built.
"""
__version__ = "0.1.0"
