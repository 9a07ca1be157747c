"""The console in a real browser: Debian's Chromium headless through selenium (scripts/browser-local up installs
both; nothing is downloaded at run time), against `hpcft ui` started as the user would, training a tiny LoRA job
created from the form on the local Slurm cluster. HPCFT_SCREENSHOTS=1 saves the README's screenshots into
docs/screenshots/."""

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from support import ROOT, hpcft_cli, wait_for

pytestmark = [pytest.mark.train, pytest.mark.slow]

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture
def console(hpcft_home):
    """`hpcft ui` on a free port; yields its printed URL (with the token)."""
    env = dict(os.environ, HPCFT_STATE_REFRESH="0")
    proc = subprocess.Popen(hpcft_cli() + ["ui"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = re.match(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", line)
        assert m, line + proc.stdout.read() if proc.poll() is not None else line
        yield m.group(0), m.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def browser():
    if not (CHROMIUM.exists() and DRIVER.exists()):
        if os.environ.get("HPCFT_REQUIRE_BROWSER") == "1":  # scripts/test as root installed it: its absence fails
            pytest.fail("HPCFT_REQUIRE_BROWSER=1 but no Chromium (scripts/browser-local up failed?)")
        pytest.skip("no Chromium: run scripts/browser-local up")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    o = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                "--disable-dev-shm-usage"):
        o.add_argument(arg)
    o.binary_location = str(CHROMIUM)
    d = webdriver.Chrome(service=Service(str(DRIVER)), options=o)
    try:
        yield d
    finally:
        d.quit()


def shot(d, name):
    if os.environ.get("HPCFT_SCREENSHOTS") == "1":
        SHOTS.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(SHOTS / f"{name}.png"))


def by_id(d, id_):
    from selenium.webdriver.common.by import By

    return d.find_element(By.ID, id_)


def click(d, id_):
    """Click the element; again if the page's live update replaced it meanwhile (the action bar after a state
    change)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(5):
        try:
            return by_id(d, id_).click()
        except StaleElementReferenceException:
            time.sleep(0.3)
    raise AssertionError(f"#{id_} kept being replaced")


def css(d, sel):
    from selenium.webdriver.common.by import By

    return d.find_elements(By.CSS_SELECTOR, sel)


def fill(d, key, value):
    el = by_id(d, f"f-{key}")
    if el.tag_name == "select":
        from selenium.webdriver.support.ui import Select

        Select(el).select_by_visible_text(value)
    else:
        el.clear()
        el.send_keys(value)


def text_of(d, id_):
    return d.execute_script("const e = document.getElementById(arguments[0]); return e ? e.textContent : '';", id_)


def shown(d, id_, expect, timeout=60):
    """The text of #id_ once it holds `expect` (a click that submits a form returns before the next page loads)."""
    return wait_for(lambda: expect in text_of(d, id_) and text_of(d, id_), f"{expect!r} in #{id_}", timeout=timeout)


def watch_states(d, until, timeout=300):
    """The states the job page showed, read from the DOM every 0.2 s (the page is never reloaded: a marker set on
    the window survives)."""
    seen = []
    d.execute_script("window.__noReload = 1;")
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = text_of(d, "job-state").strip()
        if not seen or seen[-1] != s:
            seen.append(s)
        if s in until:
            break
        time.sleep(0.2)
    assert d.execute_script("return window.__noReload;") == 1, "the page reloaded"
    return seen


def create_job(d, base, lr="0.002"):
    d.get(base + "create?experiment=lora_tiny")
    fill(d, "executor", "slurm")
    fill(d, "name", "web-lora")
    fill(d, "training.monitor_interval", "0.5")
    fill(d, "training.max_steps", "30")
    fill(d, "training.learning_rate", lr)
    # sbatch --test-only's answer for this form (`hpcft predict`), and the memory estimate
    wait_for(lambda: "partition debug" in text_of(d, "prediction") and "memory:" in text_of(d, "memory"),
             "the queue prediction and the memory estimate beside Create", timeout=60)
    assert "256 records), format prompt_response" in text_of(d, "data-check")  # the data check's result


@pytest.mark.slurm
def test_create_watch_clone_stop_delete_in_a_browser(slurm_cluster, console, browser):
    url, base = console
    d = browser
    d.get(url)
    assert d.current_url == base  # the token became a cookie and left the address bar
    create_job(d, base)
    # a form error: shown beside the field it names, as the CLI's one line
    fill(d, "training.learning_rate", "-1")
    err = wait_for(lambda: text_of(d, "err-training.learning_rate"), "the learning-rate error", timeout=60)
    assert "training.learning_rate=-1" in err and "must be > 0" in err
    fill(d, "training.learning_rate", "0.002")
    broken = Path(os.environ["HPCFT_HOME"]) / "broken.jsonl"
    broken.write_text('{"prompt": "a", "response": "b"}\n{not json\n')
    fill(d, "data.train", str(broken))
    bad = wait_for(lambda: text_of(d, "err-data.train"), "the data file error", timeout=60)
    assert f"data.train={broken}: line 2: invalid JSON" in bad  # the pre-queue check's first error, with its line
    create_job(d, base)
    if os.environ.get("HPCFT_SCREENSHOTS") == "1":  # the whole form, the estimate beside Create included
        d.set_window_size(1400, d.execute_script("return document.body.scrollHeight") + 140)
        shot(d, "create-form")
        d.set_window_size(1400, 1000)
    by_id(d, "submit").click()
    wait_for(lambda: re.search(r"/job/(\d+)$", d.current_url), "the job page", timeout=60)
    job_id = int(re.search(r"/job/(\d+)$", d.current_url).group(1))
    seen = watch_states(d, ("success", "error"))
    print("states seen without reloading:", seen)
    assert seen[-1] == "success" and "running" in seen, seen
    assert seen[0] in ("queued", "running"), seen
    assert re.search(r"slurm job\s*\d+", text_of(d, "tab-overview")), text_of(d, "tab-overview")  # ran on Slurm
    d.get(f"{base}job/{job_id}#metrics")
    wait_for(lambda: css(d, "#metrics svg polyline"), "the loss chart", timeout=30)
    pts = css(d, "#metrics svg polyline")[-1].get_attribute("points").split()
    assert len(pts) >= 10, pts  # every logged step of the loss
    ys = [float(p.split(",")[1]) for p in pts]
    assert ys[-1] > ys[0]  # SVG y grows downwards: the loss fell
    shot(d, "job-metrics")
    d.get(f"{base}job/{job_id}#monitoring")
    wait_for(lambda: css(d, "#monitor svg polyline, #monitor svg circle"), "the monitoring charts", timeout=30)
    assert "samples" in text_of(d, "latest")
    shot(d, "job-monitoring")
    click(d, "act-publish")  # the name field holds the job's name as an asset name
    shown(d, "flash", "published web-lora@1")
    d.get(base + "models")
    assert "web-lora@1" in text_of(d, "models") and "published" in text_of(d, "models")
    css(d, '#models a[href="/models/web-lora/1"]')[0].click()  # the version's page: show's rows, the card, Verify
    shown(d, "detail", f"job {job_id}, final")
    assert f"Published with hpcft from the final of job {job_id}" in text_of(d, "card")
    click(d, "act-verify")
    shown(d, "flash", "verified: every file of web-lora@1 matches SHA256SUMS")
    d.get(f"{base}job/{job_id}")

    # clone with another learning rate; stop the clone while it runs
    click(d, "act-clone")
    wait_for(lambda: css(d, "#f-training\\.learning_rate"), "the clone form", timeout=30)
    assert by_id(d, "f-training.learning_rate").get_attribute("value") == "0.002"
    fill(d, "training.learning_rate", "0.001")
    fill(d, "training.max_steps", "2000")
    by_id(d, "submit").click()
    wait_for(lambda: re.search(r"/job/(\d+)$", d.current_url) and f"/job/{job_id}" not in d.current_url,
             "the clone's page", timeout=60)
    clone_id = int(re.search(r"/job/(\d+)$", d.current_url).group(1))
    assert "learning_rate: 0.001" in d.execute_script("return document.querySelector('#tab-config pre').textContent")
    watch_states(d, ("running",), timeout=120)
    d.get(base)
    wait_for(lambda: css(d, f'tr[data-id="{clone_id}"][data-state="running"]'), "the running clone in the list")
    shot(d, "job-list")
    d.get(f"{base}job/{clone_id}")
    click(d, "act-stop")
    shown(d, "flash", "stop requested")
    assert watch_states(d, ("stopped", "error", "success"))[-1] == "stopped"

    d.get(base)
    for jid in (job_id, clone_id):
        css(d, f'input[name="id"][value="{jid}"]')[0].click()
    by_id(d, "batch-delete").click()
    listed = shown(d, "confirm-list", str(clone_id))
    assert "web-lora" in listed and str(clone_id) in listed
    by_id(d, "confirm").click()
    shown(d, "flash", "deleted 2 job(s)")
    assert not css(d, f'tr[data-id="{job_id}"]') and not css(d, f'tr[data-id="{clone_id}"]')


@pytest.mark.slurm
def test_extend_reprioritise_and_stop_a_queued_slurm_job(slurm_cluster, console, browser):
    url, base = console
    r = subprocess.run(hpcft_cli() + ["submit", "+experiment=lora_tiny", "executor=slurm", "name=web-queued",
                                      "+resources.extra.begin=now+3600", "--yes"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    job_id = int(re.search(r"submitted job (\d+)", r.stdout).group(1))
    d = browser
    d.get(url)
    d.get(f"{base}job/{job_id}")
    assert text_of(d, "job-state") == "queued"
    slurm_id = re.search(r"slurm job\s*(\d+)", text_of(d, "tab-overview")).group(1)
    field = css(d, 'form[action$="/extend"] input[name="value"]')[0]
    field.send_keys("02:00:00")
    click(d, "act-extend")
    shown(d, "flash", f"job {job_id}: time limit now 02:00:00")
    show = subprocess.run(["scontrol", "show", "job", slurm_id], capture_output=True, text=True).stdout
    assert "TimeLimit=02:00:00" in show
    from selenium.webdriver.support.ui import Select

    Select(css(d, 'form[action$="/priority"] select')[0]).select_by_visible_text("high")
    click(d, "act-priority")
    shown(d, "flash", f"job {job_id}: priority high")
    assert "priority set to high" in text_of(d, "events") and "extend" in text_of(d, "events")
    click(d, "act-stop")
    shown(d, "flash", "stop requested")
    assert watch_states(d, ("stopped", "error", "success"), timeout=120)[-1] == "stopped"
    # an ended job: Resume (a new attempt through Slurm, from its latest checkpoint), then stop it again
    assert not css(d, "#act-stop") and not css(d, "#act-retry")  # stopped by its user: nothing to retry
    click(d, "act-resume")
    shown(d, "flash", f"job {job_id}: attempt 2 queued")
    assert watch_states(d, ("queued",), timeout=60)[-1] == "queued"
    again = subprocess.run(hpcft_cli() + ["show", str(job_id)], capture_output=True, text=True).stdout
    new_slurm_id = re.search(r"slurm job\s*(\d+)", again).group(1)
    assert new_slurm_id != slurm_id and "PENDING" in subprocess.run(
        ["squeue", "-h", "-j", new_slurm_id, "-o", "%T"], capture_output=True, text=True).stdout
    click(d, "act-stop")
    shown(d, "flash", "stop requested")
    assert watch_states(d, ("stopped", "error", "success"), timeout=120)[-1] == "stopped"
