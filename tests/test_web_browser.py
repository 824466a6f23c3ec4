"""The web page in a real browser (Debian's Chromium, software WebGL), as a person uses it: upload the
astronaut, wait for the head, turn an expression slider and see the pixels change, clay and neutral,
download the glb and parse it, upload a damaged photo and read the error. Skipped, with the reason,
where Chromium or Playwright is missing (./run installs both)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from addon.writers.glb import read_glb
from tests.page_driver import PageDriver, why_not_available
from tests.web_fixtures import web_page  # noqa: F401

pytestmark = pytest.mark.skipif(why_not_available() is not None, reason=f"browser test: {why_not_available()}")


@pytest.fixture(scope="module")
def page(web_page, astronaut_rgb, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("browser")
    photo = folder / "astronaut.png"
    Image.fromarray(astronaut_rgb).save(photo)
    driver = PageDriver()
    try:
        load_s = driver.open(web_page.url)
        print(f"\npage ready in {load_s * 1000:.0f} ms")
        assert driver.reconstruct([str(photo)]) == "loaded", driver.text("#error")
        yield driver
    finally:
        driver.close()


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels that differ visibly between two renders."""
    return np.abs(a - b).max(axis=2) > 12


def test_the_head_is_drawn_with_its_texture_and_53_sliders(page):
    image = page.canvas()
    background = np.array([0xEC, 0xEE, 0xF1], np.float32)
    head = np.abs(image - background).max(axis=2) > 20
    assert 0.08 < head.mean() < 0.7, head.mean()  # a head fills part of the view, not all of it
    rows, cols = np.nonzero(head)
    assert abs(cols.mean() / image.shape[1] - 0.5) < 0.1  # framed in the middle
    skin = image[head]
    assert skin[:, 0].mean() > skin[:, 2].mean() + 15  # textured: skin is redder than it is blue
    assert page.page.locator("#sliders input").count() == 53
    assert page.text("#facts").replace(",", "").split()[0].isdigit()
    assert not [line for line in page.console if "Refused" in line or "pageerror" in line], page.console


def test_an_expression_slider_changes_the_rendered_pixels_in_the_mouth(page):
    page.page.click("#neutral")
    before = page.canvas()
    page.set_slider("jawOpen", 1.0)
    after = page.canvas()
    moved = changed(before, after)
    assert moved.mean() > 0.003, moved.mean()
    rows, _ = np.nonzero(moved)
    head_rows = np.nonzero(np.abs(before - before[0, 0]).max(axis=2) > 20)[0]
    # the jaw opens in the lower part of the head, not at the crown
    assert np.median(rows) > head_rows.min() + 0.5 * (head_rows.max() - head_rows.min())
    page.set_slider("jawOpen", 0.0)
    assert changed(before, page.canvas()).mean() < 0.0005
    fps = page.slider_fps(seconds=2.0)
    print(f"\nslider drag on the {page.text('#facts')} head: {fps:.1f} frames/s (software WebGL)")
    assert fps > 0


def test_fitted_neutral_and_clay(page):
    page.page.click("#fitted")
    fitted_values = [float(v) for v in page.page.locator("#sliders input").evaluate_all("(all) => all.map((s) => s.value)")]
    assert any(v > 0.05 for v in fitted_values)  # the astronaut smiles: the fit's weights are shown
    fitted = page.canvas()
    page.page.click("#neutral")
    neutral_values = page.page.locator("#sliders input").evaluate_all("(all) => all.map((s) => Number(s.value))")
    assert not any(neutral_values)
    assert changed(fitted, page.canvas()).mean() > 0.002
    page.page.click("#clay")
    clay = page.canvas()
    head = np.abs(clay - clay[0, 0]).max(axis=2) > 20
    spread = clay[head].std(axis=0).mean()
    page.page.click("#clay")
    textured = page.canvas()
    assert spread < textured[head].std(axis=0).mean()  # one clay colour, shaded: less varied than the photo
    page.page.click("#reset")


def test_the_glb_download_is_the_head_with_its_expressions(page):
    path = page.download(".glb")
    document, binary = read_glb(path)
    names = [m["extras"]["targetNames"] for m in document["meshes"] if "extras" in m]
    assert len(names[0]) == 53 and "jawOpen" in names[0] and len(binary) > 1_000_000
    assert page.page.locator('#files a[download$=".blend"]').count() == 1
    assert page.page.locator('#files a[download$="_depth.png"]').count() == 1


def test_a_damaged_photo_shows_a_clear_error(page, astronaut_rgb):
    jpeg = io.BytesIO()
    Image.fromarray(astronaut_rgb).save(jpeg, "JPEG")
    broken = {"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": jpeg.getvalue()[:4000] + bytes(500)}
    assert page.reconstruct([broken]) == "error"
    message = page.text("#error")
    assert "broken.jpg" in message and "damaged" in message
    assert page.page.locator("#canvas").is_visible()  # the head shown before stays


def test_the_page_says_so_when_its_server_is_gone(page, head_server, astronaut_rgb, tmp_path):
    from tests.web_fixtures import WebProcess

    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut_rgb).save(photo)
    web = WebProcess(head_server.address, tmp_path)
    shown = page.page  # one Playwright per thread: a second tab of the module's browser
    page.page = page.context.new_page()
    try:
        page.open(web.url)
        web.stop()
        assert page.reconstruct([str(photo)], timeout_s=30) == "error"
        assert "lost its server" in page.text("#error")
    finally:
        page.page.close()
        page.page = shown
        web.stop()
