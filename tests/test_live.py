"""Live animation (modules/inference/live.py, live_run.py, modules/app/live.py): frames are dropped, never queued;
Ctrl-C keeps the result so far; the page's Live tab animates a (fake) camera and leaves nothing behind.

The browser test drives Debian's Chromium with a fake camera playing a clip; it skips without a browser, as
tests/test_browser.py does (and fails where $KPMASK_REQUIRE_BROWSER is set).
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "models", "tiny-heatmap.pth.tar")
SUMMARY = re.compile(r"live: (\d+) frames animated, (\d+) dropped; latency median (\d+) ms, p95 (\d+) ms .*?; "
                     r"([\d.]+) fps of (\d+) in(?:; .*: (\d+) frames)?")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from modules.app.page import write_example

    return write_example(str(tmp_path_factory.mktemp("clip")))


def test_the_model_takes_the_newest_frame_and_the_ones_it_replaced_count_as_dropped():
    from modules.inference.live import LatestFrame

    slot = LatestFrame()
    for value in range(3):
        slot.put(np.full((2, 2, 3), value, np.uint8))
    newest = slot.take(0.1)
    assert newest.index == 2 and newest.frame[0, 0, 0] == 2 and slot.dropped == 2
    assert slot.take(0.01) is None                     # nothing waits: the slot held one frame, not a queue
    slot.put(np.zeros((2, 2, 3), np.uint8))
    slot.close()
    assert slot.take(0.01).index == 3 and slot.take(0.01) is None    # the last frame is still animated
    slot.put(np.zeros((2, 2, 3), np.uint8))
    slot.discard()                                     # left untaken at the end: dropped too
    assert (slot.received, slot.dropped) == (5, 3)


def test_the_video_holds_each_animation_over_the_frames_dropped_after_it():
    from modules.inference.live import Arrival
    from modules.inference.live_run import VideoOutput

    class Frames:
        def __init__(self):
            self.written = []

        def write(self, frames):
            self.written += [int(frame[0, 0, 0]) for frame in np.asarray(frames).reshape(-1, 1, 1, 3)]

    writer = Frames()
    output = VideoOutput(writer)
    for index in (0, 3, 4, 7):                         # animated frames; 1, 2, 5, 6 were dropped
        output.show(np.full((1, 1, 3), index, np.uint8), Arrival(None, index, 0.0))
    assert writer.written == [0, 0, 0, 3, 4, 4, 4, 7]  # the file keeps the stream's time


def test_page_sessions_without_a_tab_close_are_bounded_by_age_and_count(tmp_path):
    from modules.app.files import Storage

    storage = Storage(str(tmp_path / "app"))
    for number in range(5):
        open(os.path.join(storage.session(f"s{number}"), f"s{number}-source.png"), "w").close()
    for number in range(4):                             # s0 to s3 were last used long ago, s4 just now
        os.utime(os.path.join(storage.sessions, f"s{number}"), (1000 + number, 1000 + number))
    assert sorted(storage.prune(keep=10, idle_s=3600)) == ["s0", "s1", "s2", "s3"]
    for number in range(3):
        storage.session(f"n{number}")
        time.sleep(0.01)
    assert storage.prune(keep=2) == ["s4", "n0"] and sorted(os.listdir(storage.sessions)) == ["n1", "n2"]


def test_a_page_session_animates_camera_frames_and_its_thread_ends(tmp_path, clip):
    from modules.app.files import Limits, Storage
    from modules.app.live import LiveRequest, LiveSessions
    from modules.data.video_io import open_video

    frames = open_video(clip[1]).read_all()
    sessions = LiveSessions(Storage(str(tmp_path / "app")), Limits(), "cpu")
    request = LiveRequest(TINY, clip[0], 0.0, "none")
    shown, deadline = [], time.time() + 60
    for index in range(1000):
        if len(shown) >= 3 or time.time() > deadline:
            break
        image, line = sessions.frame("tab", frames[index % len(frames)], request)
        if image is not None:
            shown.append(image)
    assert len(shown) >= 3 and len({image.tobytes() for image in shown}) >= 2     # the camera's motion shows
    assert re.match(r"\d+ frames animated, \d+ dropped; latency median", line) and "Reference 1" in line
    sessions.take_reference("tab")
    while "Reference 2" not in line and time.time() < deadline + 30:
        line = sessions.frame("tab", frames[0], request)[1]
    assert "Reference 2" in line
    (live,) = [entry[1] for entry in sessions.sessions.values()]
    sessions.end("tab")
    assert not live.alive and not sessions.sessions


def test_frames_piped_faster_than_the_model_are_dropped_not_queued_and_ctrl_c_keeps_the_video(tmp_path, clip):
    """Raw frames at up to 1,000 per second into --driving_video -: the model animates the newest and skips the rest,
    so latency stays near one model step however long the stream runs; Ctrl-C ends it with a playable video."""
    from modules.data.video_io import open_video

    frames = open_video(clip[1]).read_all()                          # (48, 64, 64, 3)
    result = tmp_path / "live.mp4"
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "run.py"), "--mode", "live", "--device", "cpu", "--checkpoint", TINY,
         "--source_image", clip[0], "--driving_video", "-", "--size", "64x64", "--fps", "100", "--crop", "none",
         "--driving_crop", "none", "--result_video", str(result)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path))
    started = process.stdout.readline().decode() + process.stdout.readline().decode()
    assert "live: animating - into" in started, started + process.stderr.read().decode()[-2000:]
    feeding = threading.Event()

    def feed() -> None:
        index = 0
        try:
            while not feeding.is_set():
                process.stdin.write(frames[index % len(frames)].tobytes())
                process.stdin.flush()
                index += 1
                time.sleep(0.001)     # up to 1,000 frames a second: faster than the model on any CPU
        except (BrokenPipeError, OSError, ValueError):        # the process ended and its pipe closed
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(3)
    process.send_signal(signal.SIGINT)                  # Ctrl-C while frames still pour in
    out, err = process.communicate(timeout=60)
    feeding.set()
    summary = SUMMARY.search(out.decode())
    assert process.returncode == 0 and summary, out.decode()[-1500:] + err.decode()[-1500:]
    animated, dropped, median, p95, fps, received, written = (float(value) for value in summary.groups())
    assert animated >= 2 and dropped > animated and animated + dropped == received
    # Queued, the last frames would wait for every frame before them: seconds behind after 3 s of such a feed.
    assert p95 / 1000 < 4 / fps + 0.5, summary.group(0)
    assert open_video(str(result)).num_frames == written >= animated
    assert [name for name in os.listdir(tmp_path) if "partial" in name] == []


# ----------------------------------------------------------------------------------------------------------
# The Live tab in a real browser with a fake camera

def test_the_live_tab_animates_a_fake_camera_and_stops_cleanly_when_the_tab_closes(tmp_path, clip):
    import imageio_ffmpeg
    from test_browser import NO_PROXY, chromium, free_port, wait_for_app

    path = chromium()
    camera = tmp_path / "camera.y4m"                    # the clip, larger, as Chromium's fake camera plays it
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", clip[1], "-vf", "scale=192:192",
                    "-pix_fmt", "yuv420p", str(camera)], check=True)
    port, log = free_port(), tmp_path / "server.log"
    with open(log, "w") as stream:
        server = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), "--mode", "app", "--port", str(port),
                                   "--device", "cpu"], stdout=stream, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    try:
        address = f"http://127.0.0.1:{port}/"
        wait_for_app(lambda: NO_PROXY.open(address, timeout=5).read(), server, log)
        root = log.read_text().split("files under ", 1)[1].split(")", 1)[0]
        _animate_the_camera(path, address, camera, clip, root, server.pid)
        deadline = time.time() + 30                     # the tab closed: its thread and files go
        while (_live_threads(server.pid) or os.listdir(os.path.join(root, "sessions"))) and time.time() < deadline:
            time.sleep(0.5)
        assert _live_threads(server.pid) == 0, "the live worker outlived its tab"
        assert os.listdir(os.path.join(root, "sessions")) == [], "the live session's files outlived its tab"
        assert "live session ended: " in log.read_text()
    finally:
        server.terminate()
        server.wait(30)


def _animate_the_camera(path: str, address: str, camera, clip, root: str, pid: int) -> None:
    from playwright.sync_api import sync_playwright
    from test_browser import ARTIFACTS

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=path, headless=True, args=[
            "--no-proxy-server", "--no-sandbox", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={camera}"])
        context = browser.new_context(permissions=["camera"], viewport={"width": 1280, "height": 1200})
        page = context.new_page()
        page.goto(address)
        page.wait_for_selector("#animate")
        page.click("button[role=tab]:has-text('Live')")
        page.click("#live-model input")
        page.click("[role=option]:has-text('tiny-heatmap')")
        page.set_input_files("#live-source input[type=file]", clip[0])
        page.wait_for_selector("#live-source img")
        page.click("#live-crop >> text=none")          # the synthetic figure's full search would cost seconds
        page.click("#live-camera >> text=Click to Access Webcam")
        page.click("#live-camera button[aria-label='capture photo']")       # "Record": the stream starts
        frames, deadline = set(), time.time() + 60
        while len(frames) < 3 and time.time() < deadline:
            frames.update(page.eval_on_selector_all("#live-result img", "images => images.map(i => i.src)"))
            time.sleep(0.2)
        assert len(frames) >= 3, f"{len(frames)} different animated frames arrived in 60 s"
        assert all(src.startswith("data:image/jpeg;base64,") for src in frames)
        assert re.search(r"\d+ frames animated, \d+ dropped; latency median \d+ ms", page.inner_text("#live-status"))
        assert _live_threads(pid) >= 1                  # the session's worker (and the threads it started)
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTIFACTS, "live.png"))
        page.close()
        browser.close()


def _live_threads(pid: int) -> int:
    """The server's live worker threads (named by modules/inference/live.py's name_thread; the threads a worker
    starts, its OpenMP team among them, inherit the name)."""
    count = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as stream:
                count += stream.read().strip() == "kpmask-live"
        except OSError:
            pass
    return count
