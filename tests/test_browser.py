"""The web page in a real browser: headless Chromium (Debian's ``chromium``, or $KPMASK_CHROMIUM) driven by
Playwright against ``run.py --mode app`` on a free loopback port.

Without a browser these tests are skipped, and the run ends with one loud line saying so and how to get one
(tests/conftest.py), so that the README's test command passes on a fresh machine; where $KPMASK_REQUIRE_BROWSER
is set (.ci/run sets it, after installing Chromium) they fail instead. The screenshot and the time from clicking
"Animate" to the result are written to log/test-artifacts/ ($KPMASK_TEST_ARTIFACTS).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.environ.get("KPMASK_TEST_ARTIFACTS", os.path.join(ROOT, "log", "test-artifacts"))
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))    # loopback never goes through a proxy
RESULT_TIMEOUT_MS = 180_000


MISSING = "the browser tests need "          # the start of the reason conftest.py reports loudly


def _missing(what: str) -> None:
    """Skip (fail where $KPMASK_REQUIRE_BROWSER is set) for lack of ``what``."""
    reason = MISSING + what
    if os.environ.get("KPMASK_REQUIRE_BROWSER"):
        pytest.fail(reason + " ($KPMASK_REQUIRE_BROWSER is set)", pytrace=False)
    pytest.skip(reason)


def chromium() -> str:
    """The browser's path, or a skip (a failure where required) that says how to install one."""
    path = os.environ.get("KPMASK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path or not os.access(path, os.X_OK):
        _missing("Chromium: apt-get install chromium (Debian; .ci/run does), or set KPMASK_CHROMIUM to a "
                 "Chromium or Chrome executable")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("Playwright: pip install -r requirements.txt (make install does)")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_app(probe, process: subprocess.Popen, log, seconds: float = 120) -> None:
    """Until ``probe()`` stops raising OSError (the server answers); a failure with its log if it exits first
    or takes longer than ``seconds``."""
    deadline = time.time() + seconds
    while True:
        try:
            probe()
            return
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"the app did not start: {log.read_text()[-2000:]}", pytrace=False)
            time.sleep(0.5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free port: (its address, its temporary root, its log file)."""
    chromium()
    port, log = free_port(), tmp_path_factory.mktemp("app") / "server.log"
    with open(log, "w") as stream:
        process = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), "--mode", "app", "--port",
                                    str(port), "--device", "cpu"], stdout=stream, stderr=subprocess.STDOUT,
                                   cwd=str(tmp_path_factory.mktemp("cwd")))
    address = f"http://127.0.0.1:{port}/"
    wait_for_app(lambda: NO_PROXY.open(address, timeout=5).read(), process, log)
    text = log.read_text()
    root = text.split("files under ", 1)[1].split(")", 1)[0]
    yield address, root, log
    process.terminate()
    process.wait(30)
    assert not os.path.exists(root), "the app's temporary folder outlived the server"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    path = chromium()
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=path, headless=True,
                                          args=["--no-proxy-server", "--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from modules.app.page import write_example

    return write_example(str(tmp_path_factory.mktemp("clip")))


def open_page(browser, address):
    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    page.goto(address)
    page.wait_for_selector("#animate")
    return page


def animate(page) -> float:
    """Click "Animate" and wait for the result video; returns the seconds it took."""
    started = time.perf_counter()
    page.click("#animate")
    page.wait_for_selector("#result video", timeout=RESULT_TIMEOUT_MS)
    return time.perf_counter() - started


def played(page) -> dict:
    return page.evaluate("""async () => {
        const video = document.querySelector('#result video');
        video.muted = true;
        await video.play();
        await new Promise(resolve => setTimeout(resolve, 600));
        return {time: video.currentTime, width: video.videoWidth, duration: video.duration};
    }""")


def test_uploaded_clip_animates_with_the_driving_frame_count_and_plays(server, browser, clip, tmp_path):
    from modules.data.video_io import open_video

    address, root, _ = server
    page = open_page(browser, address)
    page.set_input_files("#source input[type=file]", clip[0])
    page.set_input_files("#driving input[type=file]", clip[1])
    page.wait_for_selector("#driving >> text=synthetic-id038-00")
    seconds = animate(page)
    source = page.get_attribute("#result video", "src")
    downloaded = tmp_path / "result.mp4"
    downloaded.write_bytes(NO_PROXY.open(source, timeout=30).read())
    assert open_video(str(downloaded)).num_frames == open_video(clip[1]).num_frames == 48
    shown = played(page)
    width = default_pair()[3]                       # the default model's frames: no subject found, no paste-back
    assert shown["time"] > 0 and shown["width"] == width and abs(shown["duration"] - 48 / 25) < 0.1
    assert "48 frames at 25 fps" in page.input_value("#log textarea")
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "app.png"), full_page=True)
    sessions = os.listdir(os.path.join(root, "sessions"))
    assert len(sessions) == 1
    page.close()                                        # the tab closes: its session folder goes
    deadline = time.time() + 30
    while os.path.exists(os.path.join(root, "sessions", sessions[0])) and time.time() < deadline:
        time.sleep(0.5)
    assert not os.path.exists(os.path.join(root, "sessions", sessions[0]))
    with open(os.path.join(ARTIFACTS, "app-upload.json"), "w") as stream:
        json.dump({"click_to_result_s": round(seconds, 2), "frames": 48}, stream)


FACES_PAIR = ("lp-s12.jpg", "lp-d18")                          # the bundled examples' names on the page
SYNTHETIC_PAIR = ("synthetic-id032-00.png", "synthetic-id038-00")


def default_pair() -> tuple[str, tuple[str, str], tuple[str, str], int]:
    """What the page shows first: its default model's label, the bundled example that suits it (real faces for
    a face model, the synthetic pair otherwise), the other example, and the model's frame width."""
    from modules.app.files import list_models
    from modules.core.files import read_checkpoint

    first = list_models(None)[0]
    width = read_checkpoint(first.path, lazy=True)["config"]["dataset_params"]["frame_shape"][1]
    if first.face:
        return first.label, FACES_PAIR, SYNTHETIC_PAIR, width
    return first.label, SYNTHETIC_PAIR, FACES_PAIR, width


def test_bundled_example_animates_end_to_end_with_the_shipped_model(server, browser):
    label, (source, driving), other, width = default_pair()
    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    outside = []                                                  # no telemetry, fonts or CDN scripts
    page.on("request", lambda request: outside.append(request.url)
            if not request.url.startswith((server[0], "data:", "blob:")) else None)
    page.goto(server[0])
    page.wait_for_selector("#animate")
    assert "synthetic figures" in page.inner_text("body")        # the page says what the models can do
    assert "real faces" in page.inner_text("body")
    offered = page.inner_text("#example")                         # both examples, the default model's first
    assert offered.index(source) < offered.index(other[0])
    page.click(f"#example >> text={source}")
    page.wait_for_selector(f"#driving >> text={driving}")
    seconds = animate(page)
    assert label in page.inner_text("body")
    assert page.locator("#side video").count() == 1 and page.locator("#sheet img").count() == 1
    sheet = page.locator("#sheet img")
    assert sheet.evaluate("image => image.naturalWidth") == 8 * width
    os.makedirs(ARTIFACTS, exist_ok=True)
    with open(os.path.join(ARTIFACTS, "app-example.json"), "w") as stream:
        json.dump({"click_to_result_s": round(seconds, 2), "model": label, "example": source}, stream)
    print(f"bundled example {source} with {label}: {seconds:.1f} s from clicking Animate to the result")
    page.close()
    assert outside == [], f"the page asked for something beyond its server: {outside[:3]}"


def test_corrupt_upload_shows_the_command_lines_error(server, browser, clip, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(400))
    page = open_page(browser, server[0])
    page.set_input_files("#source input[type=file]", str(broken))
    page.set_input_files("#driving input[type=file]", clip[1])
    page.wait_for_selector("#driving >> text=synthetic-id038-00")
    page.click("#animate")
    message = page.wait_for_selector("text=not an image Pillow can read", timeout=60_000)
    assert "source image broken.png" in message.inner_text()
    assert page.locator("#result video").count() == 0
    page.close()


def test_without_a_browser_these_tests_skip_loudly_unless_required(tmp_path):
    """A fresh machine without Chromium: the README's test command still passes, and says so in one loud line;
    CI ($KPMASK_REQUIRE_BROWSER) fails instead."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.join(ROOT, "tests",
               "test_browser.py"), "-k", "not without_a_browser"]
    env = dict(os.environ, KPMASK_CHROMIUM=str(tmp_path / "no-chromium"))
    env.pop("KPMASK_REQUIRE_BROWSER", None)
    skipped = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 0, skipped.stdout[-1500:]
    loud = [line for line in skipped.stdout.splitlines() if line.startswith("BROWSER TESTS SKIPPED: ")]
    assert len(loud) == 1 and "apt-get install chromium" in loud[0]
    required = subprocess.run(command, cwd=ROOT, env=dict(env, KPMASK_REQUIRE_BROWSER="1"), capture_output=True,
                              text=True, timeout=120)
    assert required.returncode == 1 and "$KPMASK_REQUIRE_BROWSER is set" in required.stdout
