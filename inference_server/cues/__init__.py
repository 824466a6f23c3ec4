"""Learned dense cues for head mode: a network of our own, trained on renders of the head model,
that reads from a face crop where each pixel lies on the canonical head (correspondence), how near
it is (depth), how sure it is (confidence), and the identity coefficients; the head fit uses them
beside FaceMesh's landmarks.

crop.py: the face crop both ends use; synth.py: training renders with ground truth; network.py:
the network and its registry; train.py: training, checkpoints, evaluation; predict.py: inference
and the fit's dense observations.
"""
