"""What the cues network's encoder knows beyond identity: a linear probe of its features.

    .venv/bin/python -m inference_server train data --out DATA --count 5500 --seed 5 --threads 1
    .venv/bin/python benchmarks/cues_probe.py --data DATA [--checkpoint CKPT] [--holdout 500] [--ridge 1000]

Why: the issue asks for expression, pose and lighting regression heads beside the identity one. A
head on the shipped encoder's frozen features is cheap to train on a CPU, but only helps if the
features carry the quantity. This fits ridge regressions (features -> each target) on the renders'
first samples and prints, on the last ``--holdout``, each target's correlation with the truth: pose
(yaw, pitch, roll) and the expressions a video moves, plus the mean over all 53 expressions.
Features: the deepest stride-32 map averaged (what the identity head reads) and the stride-16 map
pooled to 4 x 4 (where on the face something is).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PROBED = ("jawOpen", "mouthSmile_L", "eyeBlink_L", "browInnerUp_L", "browDown_L")


def encoder_features(network, images) -> np.ndarray:
    """(N, F) features of uint8 (N, 3, S, S) crops, from the maps the network's forward pass reads."""
    import torch

    with torch.inference_mode():
        maps = network.encode(images)
        pooled = [maps[-1].mean((2, 3)), torch.nn.functional.adaptive_avg_pool2d(maps[-2], 4).flatten(1)]
        return torch.cat(pooled, 1).numpy()


def probe(features: np.ndarray, targets: np.ndarray, holdout: int, ridge: float) -> np.ndarray:
    """Per target column, the correlation of a ridge regression's held-out predictions with the truth."""
    train, test = slice(0, len(features) - holdout), slice(len(features) - holdout, None)
    mean, spread = features[train].mean(0), features[train].std(0) + 1e-6
    x = (features - mean) / spread
    centre = targets[train].mean(0)
    gram = x[train].T @ x[train] + ridge * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, x[train].T @ (targets[train] - centre))
    predicted = x[test] @ weights + centre
    truth = targets[test]
    return np.array([np.corrcoef(predicted[:, k], truth[:, k])[0, 1] if truth[:, k].std() > 0 else np.nan
                     for k in range(truth.shape[1])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder of `train data` shards")
    parser.add_argument("--checkpoint", type=Path, help="default: the shipped weights")
    parser.add_argument("--holdout", type=int, default=500)
    parser.add_argument("--ridge", type=float, default=1000.0)
    args = parser.parse_args()
    import torch

    from inference_server.cues import checkpoint
    from inference_server.head.model import HeadModel
    from benchmarks.head_fit_eval import shared_model_path

    torch.set_num_threads(1)
    network = checkpoint.load(args.checkpoint or checkpoint.SHIPPED, torch.device("cpu")).eval()
    names = list(HeadModel.load(shared_model_path()).exp_names)
    features, expressions, poses = [], [], []
    for path in sorted(args.data.glob("shard_*.npz")):
        shard = np.load(path, allow_pickle=False)
        images = torch.from_numpy(shard["image"]).permute(0, 3, 1, 2)
        features += [encoder_features(network, images[i:i + 50]) for i in range(0, len(images), 50)]
        expressions.append(shard["exp_weights"])
        poses.append(shard["pose"])
    features = np.concatenate(features)
    if len(features) - args.holdout < 100:
        raise SystemExit(f"{len(features)} renders leave fewer than 100 to fit beside {args.holdout} held out")
    pose = probe(features, np.concatenate(poses), args.holdout, args.ridge)
    expression = probe(features, np.concatenate(expressions), args.holdout, args.ridge)
    print(f"{len(features) - args.holdout} renders fitted, {args.holdout} held out, {features.shape[1]} features, "
          f"ridge {args.ridge:g}: held-out correlation with the truth")
    print("  pose: yaw {:.3f}  pitch {:.3f}  roll {:.3f} (the crop is turned upright: roll is not in it)".format(*pose))
    print("  expressions: " + "  ".join(f"{name} {expression[names.index(name)]:.3f}" for name in PROBED)
          + f"  mean of all {len(names)} {np.nanmean(expression):.3f}")


if __name__ == "__main__":
    main()
