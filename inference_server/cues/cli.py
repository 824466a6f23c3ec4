"""``python -m inference_server train data|fit|eval``: the cues network, made by the project itself.

    train data --out DATA --count 18000 --seed 0     # synthetic renders (resumable shards)
    train fit --data DATA --out RUN --steps 3000     # train (resumes from RUN/last.pt); RUN/cues-cpu.pt
    train fit ... --init OLD.pt                       # fine-tune from a checkpoint's weights
    train fit ... --gradient-l1 5 --adversarial 0.5   # seed 003's detail losses (options; README: measured)
    train eval --data DATA --checkpoint RUN/cues-cpu.pt

The head model is the installed one unless ``--model`` names an ``.npz``. Every failure is one
``error:`` line and the exit statuses of ``addon.wire.errors.Exit``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from addon.wire.errors import Exit


VARIANTS = ("cues-cpu", "cues-gpu")   # network.CONFIGS' names; listed here so the parser needs no torch


def add_train_commands(subparsers) -> None:
    train = subparsers.add_parser("train", help="make training data for, train and evaluate the cues network")
    actions = train.add_subparsers(dest="train_command", required=True)
    data = actions.add_parser("data", help="render synthetic training samples into shards (resumable)")
    data.add_argument("--out", type=Path, required=True)
    data.add_argument("--count", type=int, default=18000)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--part", type=int, default=0, help="this process's share: shards part, part + parts, ...")
    data.add_argument("--parts", type=int, default=1)
    fit = actions.add_parser("fit", help="train the network on the shards (resumes from OUT/last.pt)")
    fit.add_argument("--data", type=Path, required=True)
    fit.add_argument("--out", type=Path, required=True)
    fit.add_argument("--variant", choices=VARIANTS, default="cues-cpu")
    fit.add_argument("--steps", type=int, default=3000)
    fit.add_argument("--batch", type=int, default=32)
    fit.add_argument("--lr", type=float, default=2e-3)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--init", type=Path, help="start from this checkpoint's weights (fine-tune; fresh schedule)")
    fit.add_argument("--no-mirror", dest="mirror", action="store_false",
                     help="train without flipping half of each batch left-right")
    fit.add_argument("--low-resolution", type=float, default=0.0, metavar="FRACTION",
                     help="shrink this fraction of the samples to 30-100%% and enlarge them back (default 0)")
    fit.add_argument("--gradient-l1", type=float, default=0.0, metavar="WEIGHT",
                     help="add seed 003's gradient-L1 loss on the maps with this weight (default 0: off)")
    fit.add_argument("--adversarial", type=float, default=0.0, metavar="WEIGHT",
                     help="add a PatchGAN discriminator on the maps, its loss with this weight (default 0: off)")
    evaluate = actions.add_parser("eval", help="errors of a checkpoint on the held-out shard")
    evaluate.add_argument("--data", type=Path, required=True)
    evaluate.add_argument("--checkpoint", type=Path, help="default: the shipped weights")
    for action in (data, fit, evaluate):
        action.add_argument("--model", type=Path, help="head model .npz (default: the installed one)")
        action.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default %(default)s)")
        action.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def run_train_command(args: argparse.Namespace) -> int:
    import torch

    from ..head.model import HeadModel, ModelFileError
    from ..head.store import find_model, missing_model_message
    from . import checkpoint, dataset, train

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model_path = args.model or find_model()
    if model_path is None:
        return _fail(missing_model_message(), Exit.USAGE)
    try:
        device = torch.device(args.device)
        if args.train_command == "data":
            if args.count < 1 or not 0 <= args.part < args.parts:
                return _fail("--count must be positive and 0 <= --part < --parts", Exit.USAGE)
            total = (args.count + dataset.SHARD_SIZE - 1) // dataset.SHARD_SIZE
            dataset.generate(model_path, args.out, args.count, args.seed, shards=range(args.part, total, args.parts))
            return Exit.OK
        model = HeadModel.load(model_path)
        if args.train_command == "fit":
            if not 0 <= args.low_resolution <= 1 or args.gradient_l1 < 0 or args.adversarial < 0:
                return _fail("--low-resolution must lie in [0, 1]; --gradient-l1 and --adversarial >= 0", Exit.USAGE)
            config = train.TrainConfig(variant=args.variant, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                                         init=str(args.init or ""), mirror=args.mirror, low_resolution=args.low_resolution,
                                         gradient_l1=args.gradient_l1, adversarial=args.adversarial)
            print(f"wrote {train.train(args.data, args.out, model, config, device)}", flush=True)
            return Exit.OK
        network = checkpoint.load(args.checkpoint or checkpoint.SHIPPED, device)
        _, held_out = dataset.Shards.in_folder(args.data, holdout=1)
        print(json.dumps(train.evaluate(network, held_out, model, device), indent=2))
        return Exit.OK
    except (checkpoint.CheckpointError, ModelFileError, FileNotFoundError, ValueError, RuntimeError) as exc:
        return _fail(str(exc), Exit.BAD_INPUT)


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status
