"""Learned dense cues for head mode: a network of our own, trained on renders of the head model,
that reads from a face crop where each pixel lies on the canonical head (correspondence), how near
it is (depth), how sure it is (confidence), and the identity coefficients; the head fit uses them
beside FaceMesh's landmarks.

crop.py: the face crop both ends use; synth.py: training renders with ground truth; dataset.py:
them as resumable shards on disk; network.py: the network and its registry of variants; train.py:
losses, training and evaluation; checkpoint.py: the one file format (snapshots, shipped weights,
installs); cli.py: ``python -m inference_server train``; predict.py: inference and the fit's dense
observations. Head mode uses it with the ``shape_cues network`` option.
"""
