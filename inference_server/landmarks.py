"""Dense 3D face landmarks with MediaPipe FaceMesh (legacy solution; model ships in the wheel)."""
from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager

import numpy as np

# mediapipe 0.10.14 calls a protobuf API deprecated in protobuf 4.25 on every inference.
warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)

SURFACE_LANDMARKS = 468  # 468 surface points; 10 iris points follow with refine_landmarks


def _ordered_rings(edges) -> list[list[int]]:
    """Chain an undirected edge set made of disjoint cycles into ordered vertex rings."""
    neighbours: dict[int, list[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    rings, seen = [], set()
    for start in sorted(neighbours):
        if start in seen:
            continue
        ring, prev, cur = [start], None, start
        seen.add(start)
        while True:
            nxt = next((n for n in neighbours[cur] if n != prev and n not in seen), None)
            if nxt is None:
                break
            ring.append(nxt)
            seen.add(nxt)
            prev, cur = cur, nxt
        rings.append(ring)
    return rings


UPPER_LIP_MID, LOWER_LIP_MID = 13, 14  # inner-lip midpoints: their gap says whether the mouth is open


def _topology():
    from mediapipe.python.solutions import face_mesh_connections as connections

    (oval,) = _ordered_rings(connections.FACEMESH_FACE_OVAL)
    # The lips connections hold two rings; the inner one passes through the inner-lip midpoints.
    (inner_lips,) = [r for r in _ordered_rings(connections.FACEMESH_LIPS) if {UPPER_LIP_MID, LOWER_LIP_MID} <= set(r)]
    return np.array(oval), np.array(inner_lips)


FACE_OVAL, INNER_LIPS = _topology()
NOSE_TIP = 1
LEFT_CHEEK, RIGHT_CHEEK = 234, 454     # widest points of the face oval (image left/right)
EYE_OUTER = (33, 263)
MOUTH_CORNERS = (61, 291)
EYE_RINGS = ((33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246),
             (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466))


def eye_centres(landmarks_px: np.ndarray) -> np.ndarray:
    """(2, 2) centre of each eye's lid ring in the photo, in ``EYE_RINGS`` order."""
    points = np.asarray(landmarks_px)
    return np.stack([points[list(ring), :2].mean(0) for ring in EYE_RINGS])


@contextmanager
def native_stderr_muted():
    """MediaPipe's C++ logger writes start-up warnings straight to file descriptor 2, bypassing
    Python; mute it while the graph starts so a user's terminal shows only FaceForge's messages."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class LandmarkModel:
    """FaceMesh on an aligned crop; one instance per thread (the graph is not thread-safe)."""

    def __init__(self):
        with native_stderr_muted():
            import mediapipe as mp

            self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=2,
                                                         refine_landmarks=True, min_detection_confidence=0.5)
            self._mesh.process(np.zeros((192, 192, 3), np.uint8))  # first run creates the delegates (and logs)

    def close(self) -> None:
        self._mesh.close()

    def locate(self, crop: np.ndarray) -> np.ndarray | None:
        """(478, 3) float64 in crop pixels: x right, y down, z toward the viewer (larger = nearer).

        When the crop holds more than one face, the one nearest the crop centre wins."""
        result = self._mesh.process(np.ascontiguousarray(crop))
        if not result.multi_face_landmarks:
            return None
        size = crop.shape[1]
        candidates = [np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float64) * size
                      for face in result.multi_face_landmarks]
        best = min(candidates, key=lambda pts: np.linalg.norm(pts[:, :2].mean(0) - size / 2))
        best[:, 2] *= -1.0  # MediaPipe: smaller z is nearer
        return best
