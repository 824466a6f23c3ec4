"""Video in head mode: read frames (``reader``), follow the face (``track``), fit one identity and every
frame's expressions and pose (``performance``), all with a loaded pipeline (``capture``); ``arkit`` writes
the performance in the facial-capture CSV layout."""
