"""`dynafuse serve`'s web page in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`,
driven by Selenium; nothing downloaded) uploads a real MOSI clip to the server on 127.0.0.1, and the test reads the
rendered score, labels, modality table and gate bars back from the page.

The screenshot is kept in the test's tmp folder; with DYNAFUSE_SCREENSHOT=PATH it is also copied there (the README's
docs/serve_page.png is made that way). Outside CI the test skips when the browser is absent; in CI (CI=true) that is
a failure, since .ci/run installs it.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("selenium", reason="selenium is not installed (the test extra)")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1000,1000")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and DRIVER):
        missing = "headless Chromium is not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(missing + ": .ci/run should have installed it")
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # the system browser and driver: Selenium Manager never downloads one
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def score_page(browser, url: str, clip, transcript: str = "", timeout: float = 180) -> None:
    """Open the page, pick `clip`, type `transcript`, press the button; wait for the result or the error box."""
    browser.get(url)
    wait = WebDriverWait(browser, timeout)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#run option")) > 0)
    browser.find_element(By.ID, "clip").send_keys(str(clip))
    if transcript:
        browser.find_element(By.ID, "transcript").send_keys(transcript)
    browser.find_element(By.ID, "submit").click()
    wait.until(ec.any_of(ec.visibility_of_element_located((By.ID, "result")),
                         ec.visibility_of_element_located((By.ID, "error"))))


def test_the_page_scores_a_real_clip_and_draws_the_gates(browser, live_server, real_clip, tmp_path):
    import httpx

    clip, transcript = real_clip
    score_page(browser, live_server, clip, transcript)
    error = browser.find_element(By.ID, "error")
    assert not error.is_displayed(), error.text
    # the same clip through the API: the page must show exactly what the server computed
    api = httpx.post(live_server + "/predict", files={"clip": (clip.name, clip.read_bytes(), "video/mp4")},
                     data={"transcript": transcript}, timeout=180).json()

    def text(element_id: str) -> str:
        return browser.find_element(By.ID, element_id).text

    assert float(text("score").replace("\u2212", "-")) == pytest.approx(api["score"], abs=1e-3)  # shown to 3 decimals
    assert text("polarity") == api["polarity"] and text("level") == f"7-level: {api['level']}"
    assert text("transcript-used") == transcript and "as given" in text("transcript-source")
    assert (text("scale-min"), text("scale-max")) == ("-3", "+3")
    rows = browser.find_elements(By.CSS_SELECTOR, "#modalities tbody tr")
    assert {r.get_attribute("data-modality"): r.find_elements(By.TAG_NAME, "td")[2].text for r in rows} == \
        {"text": "yes", "audio": "yes", "vision": "yes"}

    # the gate bars: one per modality, labelled with the API's weight, drawn with a proportional width
    bars = browser.find_elements(By.CSS_SELECTOR, '.gate-group[data-gate="modality"] .gate-bar')
    assert [b.get_attribute("data-component") for b in bars] == list(api["gates"]["modality"])
    for bar in bars:
        weight = api["gates"]["modality"][bar.get_attribute("data-component")]
        assert float(bar.find_element(By.CLASS_NAME, "gate-value").text) == pytest.approx(weight, abs=1e-3)
        track = bar.find_element(By.CLASS_NAME, "gate-track").size["width"]
        fill = bar.find_element(By.CLASS_NAME, "gate-fill").size["width"]
        assert track > 100 and fill / track == pytest.approx(weight, abs=0.01)

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1000, height + 160)  # the whole page (the window's frame takes some of its height)
    shot = tmp_path / "serve_page.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("DYNAFUSE_SCREENSHOT"):
        shutil.copy(shot, os.environ["DYNAFUSE_SCREENSHOT"])


def test_the_page_shows_a_server_error(browser, live_server, media_clips):
    score_page(browser, live_server, media_clips["corrupt"])
    assert browser.find_element(By.ID, "error").text.startswith("corrupt.mp4: cannot decode")
    assert not browser.find_element(By.ID, "result").is_displayed()
