"""The axes of a head's ``pose.matrix`` and of a video's Blender keys, for both ends (numpy only): OpenCV's
camera axes (x right, y down, z ahead) -> Blender's camera view (the camera at the origin looking along
+Y, Z up), the head model's axes -> Blender's, and head angles (yaw, pitch, roll) of a pose."""
import math

import numpy as np

FRONTAL = np.diag([1.0, -1.0, -1.0])  # camera-from-model rotation of a head facing the camera upright

CAMERA_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
MODEL_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def head_angles_deg(rotation: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a camera-from-model rotation, the inverse of the server's
    ``head.camera.head_rotation``: FRONTAL @ roll @ pitch @ yaw (yaw: nose toward image right, pitch:
    chin up, roll: in the image plane)."""
    m = FRONTAL.T @ np.asarray(rotation, np.float64)
    pitch = math.asin(float(np.clip(-m[2, 1], -1.0, 1.0)))
    return (math.degrees(math.atan2(-m[2, 0], m[2, 2])), math.degrees(pitch),
            math.degrees(math.atan2(m[0, 1], m[1, 1])))


def quaternion(m: np.ndarray) -> list:
    """A rotation matrix as glTF's unit quaternion ``[x, y, z, w]``, computed from its largest
    component so that the others stay exact."""
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2 * np.sqrt(1 + trace)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    elif m[0, 0] >= m[1, 1] and m[0, 0] >= m[2, 2]:
        s = 2 * np.sqrt(1 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [s / 4, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] >= m[2, 2]:
        s = 2 * np.sqrt(1 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, s / 4, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2 * np.sqrt(1 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, s / 4, (m[1, 0] - m[0, 1]) / s]
    q = np.array(q)
    return (q / np.linalg.norm(q)).tolist()
