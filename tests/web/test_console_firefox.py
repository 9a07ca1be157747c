"""The console in Firefox: Debian's firefox-esr headless (scripts/browser-local up installs it; Debian packages no
geckodriver and nothing is downloaded, so no driver): a job page with its token in the URL, rendered to a PNG by
`firefox-esr --screenshot`, and loaded again in a headless Firefox left running. That the page's script ran in
Firefox is shown on the server side: `hpcft ui --access-log` prints each request with its user agent, and the job
page's script fetches the loss chart (/api/job/N/metrics) and polls the live state (/api/states).
HPCFT_SCREENSHOTS=1 saves the picture as docs/screenshots/firefox-job.png."""

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from support import ROOT, hpcft_cli, wait_for

FIREFOX = Path("/usr/bin/firefox-esr")
SHOTS = ROOT / "docs" / "screenshots"
FIREFOX_UA = re.compile(r"Gecko/\d+ Firefox/\d+")
# a fresh profile without first-run pages, update checks or a proxy between Firefox and 127.0.0.1
PREFS = {"browser.shell.checkDefaultBrowser": False, "browser.startup.homepage_override.mstone": "ignore",
         "browser.aboutwelcome.enabled": False, "datareporting.policy.dataSubmissionEnabled": False,
         "toolkit.telemetry.reportingpolicy.firstRun": False, "app.update.disabledForTesting": True,
         "network.proxy.type": 0, "browser.startup.page": 0}


@pytest.fixture
def console(hpcft_home):
    """`hpcft ui --access-log` on a free port; yields (URL with the token, base URL, the lines it printed so far: a
    list a thread keeps appending to)."""
    env = dict(os.environ, HPCFT_STATE_REFRESH="0")
    proc = subprocess.Popen(hpcft_cli() + ["ui", "--access-log"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.match(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", line)
        assert m, line + proc.stdout.read() if proc.poll() is not None else line
        printed = []

        def read():
            for out in proc.stdout:
                printed.append(out)

        threading.Thread(target=read, daemon=True).start()
        yield m.group(0), m.group(1), printed
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def firefox(tmp_path):
    """argv of a headless Firefox with a throwaway profile, and its environment (HOME in tmp_path too)."""
    if not FIREFOX.exists():
        if os.environ.get("HPCFT_REQUIRE_BROWSER") == "1":  # scripts/test as root installed it: its absence fails
            pytest.fail("HPCFT_REQUIRE_BROWSER=1 but no Firefox ESR (scripts/browser-local up failed?)")
        pytest.skip("no Firefox ESR: run scripts/browser-local up")
    n = [0]

    def argv(*args):
        n[0] += 1
        profile = tmp_path / f"firefox-profile-{n[0]}"
        profile.mkdir()
        (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                                 for k, v in PREFS.items()))
        return [str(FIREFOX), "--headless", "--no-remote", "--new-instance", "--profile", str(profile), *args]

    home = tmp_path / "firefox-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOZ_", "DISPLAY", "WAYLAND", "XAUTHORITY"))}
    env.update(HOME=str(home), MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1")
    return argv, env


def running_job_with_metrics(tmp_path):
    """A running job in the ledger whose run directory holds a falling loss in metrics.jsonl."""
    from hpcft.ledger.store import Ledger

    out = tmp_path / "run-firefox"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "job.log").write_text("step 8 loss 1.3\n")
    (out / "metrics.jsonl").write_text("".join(
        json.dumps({"type": "train", "step": s, "epoch": 0, "loss": round(2.5 - 0.15 * s, 3), "lr": 0.002,
                    "time": 1700000000 + s}) + "\n" for s in range(1, 9)))
    return Ledger().create_job(name="firefox-view", method="lora", output_dir=str(out), state="running",
                               resource_spec="nodes=1 gpus=0")


def firefox_asked(printed, path, since=0):
    """The access-log lines of `path` answered 200 to a Firefox user agent (from line `since` on)."""
    return [line for line in list(printed)[since:] if line.startswith(f"GET {path} 200 ") and FIREFOX_UA.search(line)]


def distinct_colours(png):
    from PIL import Image

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        return rgb.size, {c for _, c in rgb.getcolors(maxcolors=rgb.width * rgb.height)}


def test_the_job_page_runs_its_script_in_firefox(console, firefox, tmp_path):
    url, base, printed = console
    argv, env = firefox
    j = running_job_with_metrics(tmp_path)
    page = f"{base}job/{j.id}?{url.partition('?')[2]}#metrics"  # the token: a cookie, then the page without it

    png = tmp_path / "firefox-job.png"
    r = subprocess.run(argv("--screenshot", str(png), "--window-size", "1280,900", page), env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and png.exists(), r.stdout + r.stderr
    assert firefox_asked(printed, f"/job/{j.id}"), printed  # the page itself, after the token's redirect
    size, colours = distinct_colours(png)
    assert size == (1280, 900), size
    assert (0x14, 0x20, 0x2E) in colours, "the console's header colour is missing: console.css not applied?"
    assert len(colours) > 20, f"{len(colours)} colours: a blank page?"
    if os.environ.get("HPCFT_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, SHOTS / "firefox-job.png")

    # the same page in a Firefox left running: its script fetches the chart's data and polls the live state
    since = len(printed)  # (the screenshot's Firefox may have fetched the metrics too: only this one's count)
    log = open(tmp_path / "firefox.log", "w")  # its own messages, kept in tmp_path for a failure's diagnosis
    browser = subprocess.Popen(argv(page), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: firefox_asked(printed, f"/api/job/{j.id}/metrics", since), "Firefox fetching the metrics",
                 timeout=120)
        wait_for(lambda: firefox_asked(printed, "/api/states", since), "Firefox polling the live states", timeout=60)
    finally:
        browser.terminate()
        browser.wait(timeout=30)
        log.close()
    print("".join(printed))  # the access log (shown with -s)
    # nothing refused or missing
    assert not [line for line in printed if re.match(r"GET /(job|api|static)\S* [45]\d\d ", line)], printed


def test_the_access_log_names_the_agent_and_never_the_token(console):
    """What the Firefox test reads, without a browser: one line per request, the query (the token) left out."""
    import urllib.error
    import urllib.request

    url, base, printed = console
    token = url.partition("token=")[2]
    req = urllib.request.Request(url.replace("/?", "/job/1?"), headers={"User-Agent": 'probe/1.0 "quoted"\tx'})
    with pytest.raises(urllib.error.HTTPError) as e:  # 303 to /job/1, which without the cookie is refused
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 403
    lines = wait_for(lambda: len(printed) >= 2 and printed[-2:], "two access-log lines", timeout=30)
    assert lines == ["GET /job/1 303 \"probe/1.0 ?quoted??x\"\n", "GET /job/1 403 \"probe/1.0 ?quoted??x\"\n"], lines
    assert not [line for line in printed if token in line]
