"""Video in head mode: read frames (``reader``), follow the face (``track``), fit one identity and every
frame's expressions and pose (``performance``), all with a loaded pipeline (``capture``); ``cli`` is the
``video`` command (its CSV comes from ``addon.data.arkit``, which the batch shares)."""
