"""The axes of a head's ``pose.matrix`` and of a video's Blender keys, for both ends (numpy only): OpenCV's
camera axes (x right, y down, z ahead) -> Blender's camera view (the camera at the origin looking along
+Y, Z up), and the head model's axes -> Blender's."""
import numpy as np

CAMERA_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
MODEL_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
