"""Full-head mode: the ICT-FaceKit morphable model (installed by the user, never shipped), its fit
to a photo, and the head's texture in the model's UV layout."""
