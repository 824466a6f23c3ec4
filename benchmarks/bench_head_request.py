"""Head-mode request cost and reply size: default options, ``refine off``, ``shape_cues landmarks``.

    .venv/bin/python benchmarks/bench_head_request.py [--runs 3] [--threads 1]

In-process (``FacePipeline``, no sockets), the astronaut photo, head geometry; prints for each
choice the median total and per-stage ``timings_ms``, the bytes of the face's arrays as they go on
the wire (the model's shared arrays, sent once per client, are printed apart), and the cues
network's forward pass on one 128² crop. Needs the shared ICT-FaceKit npz and the shipped (or
installed) cues weights.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch
    from PIL import Image
    from skimage import data

    from benchmarks.head_fit_eval import shared_model_path
    from inference_server.cues.crop import INPUT_SIDE
    from inference_server.pipeline import FacePipeline

    torch.set_num_threads(args.threads)
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, "JPEG", quality=92)
    photo = buffer.getvalue()
    pipeline = FacePipeline(torch.device("cpu"), head_model=shared_model_path())
    if pipeline.head.cues is None:
        sys.exit("error: no cues weights (shipped or installed)")
    network = pipeline.head.cues.network
    crop = torch.randint(0, 255, (1, 3, INPUT_SIDE, INPUT_SIDE), dtype=torch.uint8)
    crop_rgb = crop[0].permute(1, 2, 0).numpy()
    for label, call in (("forward pass, 1 crop", lambda: network(crop)),
                        ("maps as the product runs them (crop + mirror image, one batch)",
                         lambda: pipeline.head.cues.maps(crop_rgb))):
        with torch.inference_mode():
            call()
            times = []
            for _ in range(20):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
        print(f"cues network {label}, {args.threads} thread(s): {1000 * statistics.median(times):.1f} ms median of 20")
    shared = sum(array.nbytes for array in pipeline.head.model_arrays.values())
    print(f"model arrays sent once per client (head_model op): {shared / 2**20:.1f} MiB")
    for label, options in (("default (light, network)", {}), ("refine off", {"refine": "off"}),
                           ("shape_cues landmarks", {"shape_cues": "landmarks"})):
        options = {"geometry": "head", **options}
        pipeline.reconstruct(photo, options)   # warm-up: first-request set-up
        totals, stages = [], []
        for _ in range(args.runs):
            start = time.perf_counter()
            result = pipeline.reconstruct(photo, options)
            totals.append(time.perf_counter() - start)
            stages.append(result.meta["timings_ms"])
        median = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
        wire = sum(array.nbytes for array in result.faces[0].arrays.values())
        print(f"{label:22} {1000 * statistics.median(totals):7.0f} ms  reply {wire / 2**20:5.2f} MiB per face  "
              + " ".join(f"{k} {v:.0f}" for k, v in median.items()))


if __name__ == "__main__":
    main()
