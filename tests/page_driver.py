"""The web page in a real browser: Debian's Chromium (software WebGL: SwiftShader) driven by Playwright.
Used by tests/test_web_browser.py and benchmarks/web_page.py. The page's own CSP stays on: the driver
waits on DOM state (``body[data-state]``) instead of evaluating strings in the page."""
from __future__ import annotations

import importlib.util
import io
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic",
                 "--use-angle=swiftshader", "--enable-unsafe-swiftshader")  # WebGL without a GPU


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def why_not_available() -> str | None:
    """Why the browser cannot be driven here (None: it can)."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    if chromium_path() is None:
        return "no Chromium binary (./run installs Debian's chromium with apt as root)"
    return None


class PageDriver:
    def __init__(self, width: int = 1280, height: int = 800):
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=chromium_path(), args=list(CHROMIUM_ARGS))
        self.context = self.browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))

    def close(self) -> None:
        self.browser.close()
        self._playwright.stop()

    def open(self, url: str) -> float:
        """Load the page; seconds until it is ready to take a photo (its info fetched and shown)."""
        started = time.perf_counter()
        self.page.goto(url)
        self.page.wait_for_selector("body[data-state=ready]", timeout=30_000)
        return time.perf_counter() - started

    def reconstruct(self, files, *, geometry: str = "head", timeout_s: float = 300) -> str:
        """Choose ``files`` (paths, or Playwright file payloads), press Reconstruct, wait; the final state."""
        self.page.set_input_files("#photos", files)
        self.page.select_option("#geometry", geometry)
        self.page.click("#go")
        self.page.wait_for_selector("body[data-state=loaded], body[data-state=error]", timeout=timeout_s * 1000)
        return self.page.get_attribute("body", "data-state")

    def frames(self) -> int:
        return int(self.page.evaluate("() => window.faceforge.frames"))

    def settle(self) -> None:
        """Wait until the view rendered what was last asked of it."""
        self.page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")

    def canvas(self) -> np.ndarray:
        self.settle()
        return np.asarray(Image.open(io.BytesIO(self.page.locator("#canvas").screenshot())).convert("RGB"), np.float32)

    def set_slider(self, name: str, value: float) -> None:
        self.page.locator(f'input[data-name="{name}"]').fill(str(value))

    def slider_fps(self, name: str = "jawOpen", seconds: float = 3.0) -> float:
        """Frames the page rendered per second while a slider is dragged back and forth (an input event
        each frame, as a mouse drag sends them)."""
        return float(self.page.evaluate("""async ([name, seconds]) => {
            const slider = document.querySelector(`input[data-name="${name}"]`);
            const first = window.faceforge.frames, started = performance.now();
            let step = 0;
            while (performance.now() - started < seconds * 1000) {
                slider.value = String((Math.sin(step++ / 8) + 1) / 2);
                slider.dispatchEvent(new Event('input'));
                await new Promise((done) => requestAnimationFrame(done));
            }
            return (window.faceforge.frames - first) / ((performance.now() - started) / 1000);
        }""", [name, seconds]))

    def download(self, ending: str) -> Path:
        with self.page.expect_download() as download:
            self.page.click(f'#files a[download$="{ending}"]')
        return Path(download.value.path())

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector)

    def screenshot(self, path: Path) -> None:
        """The whole page; a .jpg path gets JPEG at quality 85 (the README's images)."""
        self.settle()
        jpeg = Path(path).suffix.lower() in (".jpg", ".jpeg")
        self.page.screenshot(path=str(path), **({"type": "jpeg", "quality": 85} if jpeg else {}))
