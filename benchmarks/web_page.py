"""The web page's figures in a real browser (Debian's Chromium, software WebGL on this CPU):

    .venv/bin/python benchmarks/web_page.py [--loads 5] [--drag-seconds 4] [--screenshots docs/images]

Starts `python -m inference_server web` with an inference server of its own (the ICT-FaceKit model
installed from the shared npz into a temporary $FACEFORGE_DATA), then prints, in one run:

- page load to ready (info fetched and shown): the first, cold load and the median of the warm ones;
- upload to head shown for the astronaut (reconstruction, Blender files, glb download, first frame);
- frames/s while an expression slider is dragged on the 24k-vertex head (53 morph targets);

``--screenshots DIR`` writes ``web_page.jpg`` (the fitted, textured head in the fit's own lighting) and
``web_page_clay.jpg`` (clay in studio light, neutral with the jaw open and a smile) for the README.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.head_fit_eval import shared_model_path  # noqa: E402
from tests.page_driver import PageDriver, why_not_available  # noqa: E402
from tests.web_fixtures import WebProcess  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--drag-seconds", type=float, default=4.0)
    parser.add_argument("--screenshots", type=Path)
    args = parser.parse_args()
    problem = why_not_available()
    if problem or not shared_model_path().exists():
        sys.exit(f"error: {problem or f'no ICT-FaceKit model at {shared_model_path()}'}")
    from PIL import Image
    from skimage import data

    from inference_server.head import store

    work = Path(tempfile.mkdtemp(prefix="faceforge-web-bench-"))
    os.environ["FACEFORGE_DATA"] = str(work / "data")
    store.install(shared_model_path(), log=lambda line: None)
    photo = work / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    web = WebProcess(None, work, env=dict(os.environ))
    driver = PageDriver()
    try:
        loads = [driver.open(web.url) for _ in range(args.loads)]
        started = time.perf_counter()
        state = driver.reconstruct([str(photo)])
        shown_s = time.perf_counter() - started
        if state != "loaded":
            sys.exit(f"error: the page says {driver.text('#error')!r}")
        if args.screenshots:
            args.screenshots.mkdir(parents=True, exist_ok=True)
            driver.screenshot(args.screenshots / "web_page.jpg")
        fps = driver.slider_fps(seconds=args.drag_seconds)
        if args.screenshots:
            driver.page.click("#neutral")
            driver.set_slider("jawOpen", 0.6)
            driver.set_slider("mouthSmile_L", 0.8)
            driver.set_slider("mouthSmile_R", 0.8)
            driver.page.click("#clay")
            driver.page.click("#lighting")
            driver.page.fill("#filter", "mouth")
            driver.screenshot(args.screenshots / "web_page_clay.jpg")
        print(f"page load to ready: first {loads[0] * 1000:.0f} ms, warm median "
              f"{statistics.median(loads[1:] or loads) * 1000:.0f} ms ({len(loads)} loads, loopback)")
        print(f"astronaut upload to head shown: {shown_s:.1f} s (head mode, refine light, 2 CPU cores)")
        print(f"slider drag: {fps:.1f} frames/s on the {driver.text('#facts')} head (software WebGL, 1280x800 page)")
    finally:
        driver.close()
        web.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
