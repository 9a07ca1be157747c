"""The console's rules through starlette's TestClient on a real SQLite ledger: the token (cookie after the first
visit), CSRF tokens, escaping of hostile names, no file outside the run directory, the CLI's refusals as HTTP 403,
the batched live endpoint; and `hpcft ui` itself, served on TCP and on a Unix socket."""

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from markupsafe import escape

from support import TESTS, hpcft_cli

TOKEN = "test-token-0123456789"


@pytest.fixture
def ledger(hpcft_home, monkeypatch):
    monkeypatch.setenv("HPCFT_USER", "bob")
    monkeypatch.setenv("HPCFT_STATE_REFRESH", "0")
    from hpcft.ledger.store import Ledger

    return Ledger()


def client(**kw):
    from starlette.testclient import TestClient

    from hpcft.web.app import create_app

    return TestClient(create_app(token=TOKEN, **kw))


def logged_in():
    c = client()
    r = c.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    return c


def csrf_of(c, path="/"):
    return re.search(r'name="csrf-token" content="([0-9a-f]+)"', c.get(path).text).group(1)


def job(ledger, tmp_path, owner="bob", **fields):
    out = tmp_path / f"run-{owner}-{fields.get('name', 'j')}"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "job.log").write_text("step 1 loss 2.0\n")
    return ledger.create_job(name=fields.pop("name", "j"), owner=owner, method="lora", output_dir=str(out),
                             resource_spec="nodes=1 gpus=0", **fields)


def test_every_request_needs_the_token(ledger):
    c = client()
    for path in ("/", "/static/console.js", "/api/states?ids=1", "/create", "/models"):
        r = c.get(path)
        assert r.status_code == 403 and "needs its token" in r.text, path
    assert c.get("/?token=wrong").status_code == 403
    r = c.get(f"/?token={TOKEN}", follow_redirects=False)
    cookie = "; ".join(r.headers.get_list("set-cookie"))
    assert f"hpcft_token={TOKEN}" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert c.get("/").status_code == 200  # the cookie now
    forged = client()
    forged.cookies.set("hpcft_token", "wrong")
    assert forged.get("/").status_code == 403


def test_security_headers_and_no_inline_script(ledger, tmp_path):
    j = job(ledger, tmp_path)
    c = logged_in()
    for path in ("/", f"/job/{j.id}", "/create", "/models", f"/job/{j.id}/clone"):
        r = c.get(path)
        assert r.status_code == 200, (path, r.text[-500:])
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), path  # every script is a file of the package
        assert not re.search(r"\son[a-z]+=", r.text), path  # no inline event handlers either


def hostile_names():
    names = []
    for p in sorted(TESTS.glob("bad_input/name_*.yaml")):
        args = yaml.safe_load(p.read_text())["args"]
        names.append(args[args.index("--name") + 1] if "--name" in args else args[0].partition("=")[2])
    return names + ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>"]


def test_hostile_names_are_shown_literally(ledger, tmp_path):
    names = hostile_names()
    assert len(names) >= 8
    ids = [job(ledger, tmp_path, name=f"n{i}", description=n).id for i, n in enumerate(names)]
    for i, n in zip(ids, names, strict=True):
        ledger.update(i, name=n)
    c = logged_in()
    page = c.get("/?sort=id").text
    for i, n in zip(ids, names, strict=True):
        assert str(escape(n)) in page, n
        detail = c.get(f"/job/{i}").text
        assert str(escape(n)) in detail
    for raw in ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>"):
        assert raw not in page and raw not in c.get(f"/job/{ids[-1]}").text
    assert "<script>alert" not in c.get("/?name=<script>alert(1)</script>").text  # the search echoes it escaped


def test_a_post_without_the_sessions_csrf_token_is_refused(ledger, tmp_path):
    j = job(ledger, tmp_path)
    c = logged_in()
    other = logged_in()
    for data in ({}, {"csrf": "0" * 64}, {"csrf": csrf_of(other)}):  # none, forged, another session's
        r = c.post(f"/job/{j.id}/stop", data=data)
        assert r.status_code == 403 and "CSRF token is missing or wrong" in r.text
    assert ledger.get(j.id).state == "queued" and not [e for e in ledger.events(j.id) if e.kind == "stop"]
    r = c.post("/jobs/batch/do", data={"action": "delete", "id": str(j.id)})
    assert r.status_code == 403 and ledger.get(j.id)
    r = c.post(f"/job/{j.id}/stop", data={"csrf": csrf_of(c)}, follow_redirects=False)
    assert r.status_code == 303
    assert any(e.kind == "stop" for e in ledger.events(j.id))


def test_no_file_outside_the_run_directory(ledger, tmp_path):
    j = job(ledger, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    os.symlink(secret, os.path.join(j.output_dir, "logs", "link.log"))
    c = logged_in()
    r = c.get(f"/job/{j.id}/file", params={"path": "logs/job.log"})
    assert r.status_code == 200 and r.text == "step 1 loss 2.0\n" and "attachment" in r.headers["content-disposition"]
    for bad in ("../secret.txt", str(secret), "/etc/passwd", "logs/link.log", "logs", "logs/../../secret.txt"):
        r = c.get(f"/job/{j.id}/file", params={"path": bad})
        assert r.status_code == 403 and "not a file inside job" in r.text, bad
        r = c.get(f"/api/job/{j.id}/log", params={"file": bad, "offset": 0})
        assert r.status_code == 403, bad
    assert "not yours" not in c.get(f"/api/job/{j.id}/log", params={"file": "logs/link.log"}).text
    assert c.get(f"/api/job/{j.id}/log", params={"file": "logs/job.log", "offset": 5}).json()["text"] == "1 loss 2.0\n"


def test_others_jobs_are_refused_with_the_clis_line(ledger, tmp_path):
    mine, private = job(ledger, tmp_path), job(ledger, tmp_path, owner="alice", name="a1")
    shared = job(ledger, tmp_path, owner="alice", name="a2", project="p", access="ro")
    ledger.set_projects({"p": ["alice", "bob"]})
    c = logged_in()
    r = c.get(f"/job/{private.id}")
    assert r.status_code == 403 and f"job {private.id} (owner alice, project default): you (bob) have no access" in r.text
    for path in (f"/api/job/{private.id}/metrics", f"/api/job/{private.id}/log", f"/job/{private.id}/clone"):
        assert c.get(path).status_code == 403, path
    page = c.get(f"/job/{shared.id}").text
    assert "read-only" not in page and 'id="act-clone"' in page and 'id="act-stop"' not in page
    assert 'id="act-stop"' in c.get(f"/job/{mine.id}").text
    token = csrf_of(c)
    r = c.post(f"/job/{shared.id}/stop", data={"csrf": token})
    assert r.status_code == 403 and "read-only access and cannot stop it" in r.text
    assert ledger.get(shared.id).state == "queued"
    r = c.post("/jobs/batch", data={"csrf": token, "action": "delete", "id": [str(mine.id), str(private.id)]})
    assert r.status_code == 200 and "no access and cannot delete it" in r.text
    assert re.search(rf'name="id" value="{mine.id}"', r.text) and not re.search(rf'name="id" value="{private.id}"', r.text)
    r = c.post("/jobs/batch/do", data={"csrf": token, "action": "delete", "id": [str(mine.id), str(private.id)]})
    assert r.status_code == 403 and ledger.get(mine.id)  # one refused: nothing deleted
    r = c.post("/jobs/batch/do", data={"csrf": token, "action": "delete", "id": [str(mine.id)]})
    assert r.status_code == 200 and "deleted 1 job(s)" in r.text
    assert [j.id for j in ledger.search()] == sorted([private.id, shared.id], reverse=True)


def test_share_and_retry_follow_the_viewers_access(ledger, tmp_path):
    from hpcft.states import State
    from hpcft.web.pages import allowed_actions

    mine = job(ledger, tmp_path)
    theirs = job(ledger, tmp_path, owner="alice", name="a3", project="p", access="rw")
    ledger.set_projects({"p": ["alice", "bob"]})
    c = logged_in()
    page = c.get(f"/job/{mine.id}").text
    assert 'id="act-share"' in page and 'id="act-retry"' not in page  # queued: nothing to retry
    token = csrf_of(c)
    r = c.post(f"/job/{mine.id}/share", data={"csrf": token, "value": "ro"})
    assert r.status_code == 200 and f"job {mine.id}: access ro for the members of project default" in r.text
    assert ledger.get(mine.id).access == "ro" and any(e.kind == "share" for e in ledger.events(mine.id))
    r = c.post(f"/job/{mine.id}/share", data={"csrf": token, "value": "everyone"})
    assert r.status_code == 400 and "level=everyone: unknown access" in r.text and ledger.get(mine.id).access == "ro"
    page = c.get(f"/job/{theirs.id}").text  # read-write: may stop or resume it, never share it
    assert 'id="act-stop"' in page and 'id="act-share"' not in page
    r = c.post(f"/job/{theirs.id}/share", data={"csrf": token, "value": "rw"})
    assert r.status_code == 403 and "cannot share it" in r.text and ledger.get(theirs.id).access == "rw"
    ledger.transition(mine.id, State.running, "started")
    ledger.transition(mine.id, State.error, "failed", cause="node_fail")
    assert 'id="act-retry"' in c.get(f"/job/{mine.id}").text
    owner = allowed_actions(ledger.get(mine.id), "owner", team=True)  # the team console: the owner's side acts
    assert not owner["share"] and not owner["retry"] and not owner["resume"] and owner["delete"]


def test_live_states_are_one_read_per_interval(ledger, tmp_path):
    a, b = job(ledger, tmp_path, name="a"), job(ledger, tmp_path, name="b")
    c = logged_in()
    live = c.app.state.live
    live.ttl = 3600  # within one interval: every watcher gets the same snapshot
    before = live.computed
    for _ in range(20):
        assert c.get(f"/api/states?ids={a.id},{b.id}").json()[str(a.id)]["state"] == "queued"
    assert live.computed - before == 1
    ledger.transition(a.id, "running", "started")
    assert c.get(f"/api/states?ids={a.id}").json()[str(a.id)]["state"] == "queued"  # still the cached read
    live.ttl = 0
    assert c.get(f"/api/states?ids={a.id}").json()[str(a.id)]["state"] == "running"
    ledger.delete([b.id])
    assert c.get(f"/api/states?ids={b.id}").json()[str(b.id)]["state"] == "deleted"


def test_search_form_takes_the_list_options(ledger, tmp_path):
    job(ledger, tmp_path, name="alpha")
    job(ledger, tmp_path, name="beta", state="running")
    c = logged_in()
    assert ">alpha<" in c.get("/?name=alp").text and ">beta<" not in c.get("/?name=alp").text
    assert ">beta<" in c.get("/?state=running").text and ">alpha<" not in c.get("/?state=running").text
    r = c.get("/?resources=bogus")
    assert "error: --resources bogus: expected key=value" in r.text  # `hpcft list`'s line


def test_a_form_error_is_shown_beside_its_field_and_creates_nothing(ledger):
    c = logged_in()
    r = c.post("/create", data={"csrf": csrf_of(c), "experiment": "lora_tiny", "executor": "local",
                                "training.learning_rate": "-1"})
    assert r.status_code == 400
    field = re.search(r'<span class="field-error" id="err-training.learning_rate">([^<]*)</span>', r.text).group(1)
    assert field.startswith("training.learning_rate=-1.0: must be &gt; 0")
    assert ledger.search() == []
    assert 'value="-1"' in r.text  # the form keeps what was typed


def ui(args, env):
    return subprocess.Popen(hpcft_cli() + ["ui", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def test_hpcft_ui_serves_only_with_its_token(ledger, tmp_path):
    import httpx

    env = dict(os.environ)
    p = ui([], env)
    try:
        url = p.stdout.readline().strip()
        m = re.fullmatch(r"(http://127\.0\.0\.1:\d+/)\?token=([\w-]{40,})", url)
        assert m, url
        assert httpx.get(m.group(1)).status_code == 403
        assert httpx.get(m.group(1) + "?token=guess").status_code == 403
        assert httpx.get(url, follow_redirects=True).status_code == 200
    finally:
        p.terminate()
        p.wait(timeout=30)
    sock = tmp_path / "ui.sock"
    p = ui(["--socket", str(sock)], env)
    try:
        line = p.stdout.readline()
        token = re.search(r"token=([\w-]+)", line).group(1)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600  # only its user can connect
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://console") as h:
            assert h.get("/").status_code == 403
            assert h.get(f"/?token={token}", follow_redirects=True).status_code == 200
    finally:
        p.terminate()
        p.wait(timeout=30)
    assert not sock.exists()


def test_team_mode_takes_the_user_only_from_the_trusted_proxy(ledger):
    from starlette.testclient import TestClient

    from hpcft.ledger.store import Ledger
    from hpcft.web.app import create_app

    app = create_app(mode="team", trusted_proxies=("127.0.0.1",))
    elsewhere = TestClient(app, client=("10.9.9.9", 40000))
    r = elsewhere.get("/", headers={"X-Remote-User": "alice"})
    assert r.status_code == 403 and "trusted proxy" in r.text
    proxied = TestClient(app, client=("127.0.0.1", 40000))
    r = proxied.get("/")
    assert r.status_code == 403 and "X-Remote-User" in r.text  # the proxy named nobody
    r = proxied.get("/", headers={"X-Remote-User": "bob"})  # on this SQLite ledger: refused, never served as bob
    assert r.status_code in (400, 403) and ("PostgreSQL" in r.text if hasattr(Ledger, "as_user") else
                                            "Ledger.as_user" in r.text)
    with pytest.raises(Exception, match="--trusted-proxy"):
        create_app(mode="team")


def test_sweeps_pages_show_the_points_best_first(ledger, tmp_path):
    from hpcft.ledger import sweeps as sl

    a, b = job(ledger, tmp_path, name="s-lr=1e-3"), job(ledger, tmp_path, name="s-lr=2e-3")
    for k, (j, loss) in enumerate(((a, 0.9), (b, 0.4))):
        (Path(j.output_dir) / "metrics.jsonl").write_text(
            f'{{"type": "train", "step": 5, "loss": {loss}}}\n'
            f'{{"type": "eval", "split": "validation", "step": 5, "epoch": 1, "loss": {loss}}}\n')
        sl.record_point(ledger, j.id, a.id, k, 2, {"values": {"lr": ["1e-3", "2e-3"][k]}, "label": f"lr={k}",
                                                   "base": "<b>sweep</b>"})
    c = logged_in()
    page = c.get("/sweeps").text
    assert f'href="/sweep/{a.id}"' in page and "&lt;b&gt;sweep&lt;/b&gt;" in page
    page = c.get(f"/sweep/{b.id}").text  # any point's id names its sweep
    rows = re.findall(r'<tr><td><a href="/job/(\d+)">', page)
    assert rows == [str(b.id), str(a.id)]  # the lower validation loss first
    assert f'data-jobs="{b.id},{a.id}"' in page


def test_the_token_redirect_stays_on_this_site(ledger):
    r = client().get(f"http://testserver//evil.example/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/evil.example/"


def test_the_pipeline_page_shows_its_stages_and_the_job_page_links_to_it(ledger, tmp_path):
    info = {"name": "sft-dpo", "id": None}
    sft = job(ledger, tmp_path, name="sft-dpo:sft", state="success")
    info["id"] = sft.id
    ledger.update(sft.id, config={"pipeline": dict(info, stage="sft")})
    dpo = job(ledger, tmp_path, name="sft-dpo:dpo", state="error", state_reason="trainer exited with code 1",
              parent_id=sft.id, config={"pipeline": dict(info, stage="dpo"), "after": [sft.id]})
    other = job(ledger, tmp_path, owner="carol", name="sft-dpo:publish", config={"pipeline": dict(info, stage="x")})
    c = logged_in()
    page = c.get(f"/pipeline/{sft.id}").text
    rows = re.findall(r'<tr data-id="(\d+)"><td>(\w+)</td>', page)
    assert rows == [(str(sft.id), "sft"), (str(dpo.id), "dpo")]  # carol's stage is not bob's to see
    assert str(other.id) not in rows and "trainer exited with code 1" in page
    assert page.count(f'<a href="/job/{sft.id}">{sft.id}</a>') == 3  # its row; dpo waits for it, starts from it
    page = c.get(f"/job/{dpo.id}").text
    assert f'stage <b>dpo</b> of <a href="/pipeline/{sft.id}">pipeline {sft.id} sft-dpo</a>' in page
    assert 'id="job-pipeline"' not in c.get(f"/job/{job(ledger, tmp_path, name='alone').id}").text
    r = c.get("/pipeline/99999")
    assert r.status_code == 404 and "no such pipeline" in r.text
