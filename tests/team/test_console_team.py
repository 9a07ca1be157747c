"""The team console (`hpcft ui --team`) behind a real nginx with basic auth (scripts/nginx-local), on the real team
PostgreSQL (`hpcft admin init`, `hpcft admin console-role`), with jobs on the real Slurm cluster. The console runs as
its own service user (hpcft-console: peer authentication makes that its database role) and acts for the user nginx
names, one transaction at a time (Ledger.as_user), so row-level security decides for bob exactly as in bob's psql
and CLI. Also: the database side alone (the console's role sees nothing by itself; an ordinary user cannot act as
another, whatever it SETs), a user header that bypasses nginx, and one user's `hpcft ui` (token) against a second
Unix user.

alice owns a held (pending) Slurm job A, shared read-only with proj-a (alice, bob, admin); carol (proj-b) owns a
held job C. Requests go through http.client; a browser is not needed for these checks.
"""

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from support.team import ADMIN, ALICE, BOB, CAROL, HPCFT, PATH, RUNS, SOCKDIR, VENV, as_user, run_as, team  # noqa: F401
from support.team import user_env

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
NGINX_LOCAL = ROOT / "scripts" / "nginx-local"
DB = "hpcft_console_test"
URL = f"postgresql+psycopg:///{DB}?host={SOCKDIR}"
ENV = {"HPCFT_DB_URL": URL, "HPCFT_STATE_REFRESH": "0"}
CONSOLE_USER = "hpcft-console"
PROXY_PORT, CONSOLE_PORT, PROXY_SOURCE = 8480, 8481, "127.0.0.2"  # nginx connects from 127.0.0.2 (proxy_bind)
HELD = ["executor=slurm", "training.sequence_length=64", "training.batch_size=8", "training.max_steps=3",
        "resources.time=00:10:00", "+resources.extra.hold=", "--yes"]


def hp(user, *args, timeout=180):
    return as_user(user, list(args), env=ENV, timeout=timeout)


def psql(user, *statements):
    argv = ["psql", "-X", "-h", SOCKDIR, "-d", DB, "-At", "-v", "ON_ERROR_STOP=1"]
    for s in statements:
        argv += ["-c", s]
    r = run_as(user, argv, cwd="/")  # (the console's service user has no home)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def psql_ids(user, *before):
    rc, out, err = psql(user, *before, "SELECT id FROM jobs ORDER BY id")
    assert rc == 0, err
    return [int(x) for x in out.splitlines() if x.strip().isdigit()]


def cli_ids(user):
    r = hp(user, "list", "--json")
    assert r.returncode == 0, r.stderr
    return sorted(j["id"] for j in json.loads(r.stdout))


def root_hp(*args):
    from support import hpcft_cli

    env = dict(os.environ, HPCFT_DB_URL=URL)
    return subprocess.run(hpcft_cli() + list(args), capture_output=True, text=True, timeout=180, env=env)


def wait_port(host, port, proc, log, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the console exited ({proc.returncode}): {Path(log).read_text()[-2000:]}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"nothing listens on {host}:{port} after {timeout} s: {Path(log).read_text()[-2000:]}")


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group this test started (start_new_session)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


class Client:
    """One browser's worth of state (cookies) for one user, through nginx with basic auth (or straight to a port)."""

    def __init__(self, user=None, password=None, port=PROXY_PORT, host="127.0.0.1"):
        self.user, self.password, self.port, self.host, self.cookies = user, password, port, host, {}

    def request(self, method, path, form=None, headers=None):
        h = dict(headers or {})
        if self.user:
            h["Authorization"] = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            from urllib.parse import urlencode

            body = urlencode(form)
            h["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            text = r.read().decode("utf-8", errors="replace")
            for k, v in r.getheaders():
                if k.lower() == "set-cookie":
                    name, _, rest = v.partition("=")
                    self.cookies[name.strip()] = rest.split(";")[0]
            return r.status, text
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def csrf(self):
        status, page = self.get("/")
        assert status == 200, page[-500:]
        return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def listed_ids(page):
    return sorted({int(i) for i in re.findall(r'href="/job/(\d+)"', page)})


# ------------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def ledger(team):  # noqa: F811
    """A fresh team database with row-level security, projects from Slurm, an administrator and the console role."""
    for _ in range(30):
        drop = subprocess.run(["psql", "-X", "-h", SOCKDIR, "-d", "hpcft", "-c", f"DROP DATABASE IF EXISTS {DB}"],
                              capture_output=True, text=True, timeout=60)
        if drop.returncode == 0:
            break
        time.sleep(2)
    r = subprocess.run(["psql", "-X", "-h", SOCKDIR, "-d", "hpcft", "-c", f"CREATE DATABASE {DB}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ok = subprocess.run(["id", CONSOLE_USER], capture_output=True).returncode == 0
    if not ok:
        pytest.skip(f"no Unix user {CONSOLE_USER}: run `sudo bash scripts/nginx-local up`")
    for args in (["admin", "init"], ["admin", "sync-projects"], ["admin", "grant", ADMIN],
                 ["admin", "console-role", CONSOLE_USER]):
        r = root_hp(*args)
        assert r.returncode == 0, r.stdout + r.stderr
    return URL


@pytest.fixture(scope="module")
def jobs(ledger):
    """alice's held job A (shared ro with proj-a) and carol's held job C: live, so that a stop button could show."""
    ids, slurm_ids = {}, []
    try:
        for user, name in ((ALICE, "alice-held"), (CAROL, "carol-held")):
            r = hp(user, "submit", *HELD, f"name={name}")
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr
            job = next(j for j in json.loads(hp(user, "list", "--json").stdout) if j["name"] == name)
            ids[user] = job["id"]
            slurm_ids.append(str(job["slurm_job_id"]))
        assert hp(ALICE, "share", str(ids[ALICE]), "ro").returncode == 0
        yield ids[ALICE], ids[CAROL]
    finally:
        if slurm_ids:
            subprocess.run(["scancel", *slurm_ids], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def passwords(team):  # noqa: F811
    if any(subprocess.run(["dpkg", "-s", p], capture_output=True).returncode for p in ("nginx-light",
                                                                                       "apache2-utils")):
        pytest.skip("no nginx here: run `sudo bash scripts/nginx-local up` (Debian's nginx-light, apache2-utils)")
    env = dict(os.environ, NGINX_LOCAL_PORT=str(PROXY_PORT), NGINX_LOCAL_UPSTREAM=f"127.0.0.1:{CONSOLE_PORT}",
               NGINX_LOCAL_SOURCE=PROXY_SOURCE)
    r = subprocess.run(["bash", str(NGINX_LOCAL), "up"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["bash", str(NGINX_LOCAL), "passwords"], capture_output=True, text=True, timeout=60, env=env)
    return dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)


@pytest.fixture(scope="module")
def console(jobs, passwords):
    """`hpcft ui --team` as the console's service user, trusting only nginx's address."""
    home = Path(tempfile.mkdtemp(prefix="hpcft-console-"))
    shutil.chown(home, CONSOLE_USER, CONSOLE_USER)
    home.chmod(0o700)
    env = {"HOME": str(home), "USER": CONSOLE_USER, "LOGNAME": CONSOLE_USER, "PATH": PATH, "LANG": "C.UTF-8",
           "HPCFT_HOME": str(home / ".hpcft"), "HPCFT_RUNS": str(RUNS), **ENV}
    log = home.parent / f"{home.name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["runuser", "-u", CONSOLE_USER, "--", str(HPCFT), "ui", "--team", "--trusted-proxy",
                                 PROXY_SOURCE, "--bind", f"127.0.0.1:{CONSOLE_PORT}"], env=env, cwd=str(home),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port("127.0.0.1", CONSOLE_PORT, proc, log)
        yield {u: Client(u, pw) for u, pw in passwords.items()}
    finally:
        stop(proc)
        shutil.rmtree(home, ignore_errors=True)
        log.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------ tests

def test_the_console_role_alone_sees_nothing_and_users_cannot_act_as_others(jobs):
    a, c = jobs
    bob = psql_ids(BOB)
    assert a in bob and c not in bob
    # a model version alice publishes for everyone (visibility all): carol sees it
    rc, _, err = psql(ALICE, "INSERT INTO model_assets (name, version, state, owner, project, visibility, source, "
                             "kind, method, description, path, created_at, updated_at) VALUES ('console-probe', 1, "
                             f"'published', '{ALICE}', 'proj-a', 'all', 'final', 'lora', 'lora', '', '', now(), now())")
    assert rc == 0, err
    assert psql(CAROL, "SELECT count(*) FROM model_assets")[1] == "1"
    # the console's role by itself: no rows anywhere, no writes
    rc, out, _ = psql(CONSOLE_USER, "SELECT (SELECT count(*) FROM jobs) || ' ' || (SELECT count(*) FROM events) || ' '"
                                    " || (SELECT count(*) FROM model_assets) || ' ' || (SELECT count(*) FROM "
                                    "project_members) || ' ' || (SELECT count(*) FROM admins)",
                      f"UPDATE jobs SET state = 'error' WHERE id = {a}")
    assert (rc, out) == (0, "0 0 0 0 0\nUPDATE 0"), out
    rc, _, err = psql(CONSOLE_USER, "INSERT INTO jobs (name, description, owner, project, method, state, executor, "
                                    "resource_spec, output_dir, attempt, created_at, updated_at, access) VALUES ('x', "
                                    f"'', '{ALICE}', 'proj-a', 'lora', 'queued', 'local', '', '', 1, now(), now(), "
                                    "'none')")
    assert rc != 0 and "row-level security" in err, err
    # acting for bob (one transaction): exactly bob's own psql view; the next transaction is nobody again
    rc, out, err = psql(CONSOLE_USER, "BEGIN", f"SET LOCAL hpcft.acting_user = '{BOB}'",
                        "SELECT 'ids ' || string_agg(id::text, ',' ORDER BY id) FROM jobs", "COMMIT",
                        "SELECT 'after ' || count(*) FROM jobs")
    rows = [x for x in out.splitlines() if x.startswith(("ids ", "after "))]
    assert rc == 0 and rows == ["ids " + ",".join(map(str, bob)), "after 0"], (out, err)
    # an ordinary user naming someone else, or switching roles, gains nothing
    for user, other in ((ALICE, BOB), (CAROL, ALICE), (BOB, ALICE)):
        own = psql_ids(user)
        assert psql_ids(user, f"SET hpcft.acting_user = '{other}'") == own
        assert psql_ids(user, "SET ROLE hpcft_users", f"SET hpcft.acting_user = '{other}'") == own
        assert psql(user, "SELECT hpcft_me()")[1] == user
        for role in (other, CONSOLE_USER, "hpcft_consoles", "hpcft_admins"):
            rc, _, err = psql(user, f'SET ROLE "{role}"')
            assert rc != 0 and "permission denied" in err, (user, role, err)
    assert c not in psql_ids(ALICE, f"SET hpcft.acting_user = '{CAROL}'")
    # nor can the console act for another console, or for a role outside the team
    for name in (CONSOLE_USER, "postgres", "nobody-here", ""):
        rc, out, err = psql(CONSOLE_USER, f"SET hpcft.acting_user = '{name}'", "SELECT count(*) FROM jobs")
        assert (rc, out.splitlines()[-1]) == (0, "0"), (name, out, err)


def test_ledger_as_user_in_the_console_process_is_that_users_ledger(jobs):
    """Ledger.as_user as the console's service user: each view sees what its user's own CLI lists; the plain ledger
    (and so a request that names nobody) sees nothing, also after the views were used."""
    script = (
        "import json, sys\n"
        "from hpcft.ledger.store import Ledger\n"
        "base = Ledger(sys.argv[1])\n"
        "out = {'base': sorted(j.id for j in base.search())}\n"
        "for u in sys.argv[2:]:\n"
        "    v = base.as_user(u)\n"
        "    out[u] = [v.user, sorted(j.id for j in v.search()), v.caller().admin]\n"
        "out['base_after'] = [base.user, sorted(j.id for j in base.search())]\n"
        "print(json.dumps(out))\n")
    r = subprocess.run(["runuser", "-u", CONSOLE_USER, "--", str(VENV / "bin" / "python"), "-c", script, URL, ALICE,
                        BOB, CAROL, ADMIN], capture_output=True, text=True, timeout=120, cwd="/",
                       env={"PATH": PATH, "HOME": "/tmp", "LANG": "C.UTF-8"})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["base"] == [] and got["base_after"] == [CONSOLE_USER, []], got
    for user in (ALICE, BOB, CAROL, ADMIN):
        assert got[user] == [user, cli_ids(user), user == ADMIN], (user, got[user])


def test_through_nginx_bob_sees_alices_read_only_job_without_a_stop_button(jobs, console):
    a, c = jobs
    assert Client().get("/")[0] == 401  # nginx asks who you are
    assert Client(BOB, "wrong password").get("/")[0] == 401
    status, page = console[BOB].get("/")
    assert status == 200, page[-500:]
    assert listed_ids(page) == cli_ids(BOB) == psql_ids(BOB), page[-2000:]  # one set of rules
    assert a in listed_ids(page) and c not in listed_ids(page)
    status, page = console[BOB].get(f"/job/{a}")
    assert status == 200 and "alice-held" in page, page[-500:]
    assert 'id="act-stop"' not in page and 'action="/job/{}/stop"'.format(a) not in page
    status, page = console[ALICE].get(f"/job/{a}")  # control: its owner gets the button
    assert status == 200 and 'id="act-stop"' in page, page[-2000:]


def test_a_forged_stop_from_bob_is_refused_and_changes_nothing(jobs, console):
    a, _ = jobs
    before = (psql(ALICE, f"SELECT state, count(e.id) FROM jobs j LEFT JOIN events e ON e.job_id = j.id "
                          f"WHERE j.id = {a} GROUP BY state"))
    assert before[0] == 0 and before[1].startswith("queued|"), before
    bob = console[BOB]
    token = bob.csrf()
    status, page = bob.request("POST", f"/job/{a}/stop", form={"csrf": token})
    assert status == 403, (status, page[-1000:])
    assert f"you ({BOB}) have read-only access" in page, page[-1000:]
    # a browser's own X-Remote-User does not get past nginx: still bob, still refused
    status, page = bob.request("POST", f"/job/{a}/stop", form={"csrf": token}, headers={"X-Remote-User": ALICE})
    assert status == 403 and f"you ({BOB})" in page, page[-1000:]
    assert bob.request("POST", f"/job/{a}/delete", form={"csrf": token})[0] == 403
    assert psql(ALICE, f"SELECT state, count(e.id) FROM jobs j LEFT JOIN events e ON e.job_id = j.id "
                       f"WHERE j.id = {a} GROUP BY state") == before
    # control: shared read-write, the same POST is bob's stop request, written by the database as bob's
    assert hp(ALICE, "share", str(a), "rw").returncode == 0
    try:
        status, page = bob.request("POST", f"/job/{a}/stop", form={"csrf": bob.csrf()})
        assert status == 303, (status, page[-1000:])
        rc, out, _ = psql(ALICE, f"SELECT data::json ->> 'by' FROM events WHERE job_id = {a} AND kind = 'request'")
        assert (rc, out) == (0, BOB)
    finally:
        assert hp(ALICE, "share", str(a), "ro").returncode == 0


def test_carol_sees_none_of_proj_a(jobs, console):
    a, c = jobs
    status, page = console[CAROL].get("/")
    assert status == 200 and listed_ids(page) == [c] == cli_ids(CAROL), page[-2000:]
    assert "alice-held" not in page
    status, page = console[CAROL].get(f"/job/{a}")
    assert status in (403, 404) and "no such job" in page and "alice-held" not in page, (status, page[-1000:])
    status, page = console[ADMIN].get("/")  # control: the administrator sees both projects
    assert status == 200 and {a, c} <= set(listed_ids(page)), page[-2000:]


def test_a_user_header_that_bypasses_nginx_is_refused(jobs, console):
    a, _ = jobs
    direct = Client(port=CONSOLE_PORT)  # from 127.0.0.1: not the proxy's address
    for path in ("/", f"/job/{a}", "/api/states"):
        status, page = direct.get(path, headers={"X-Remote-User": ALICE})
        assert status == 403 and "not a trusted proxy" in page and "alice-held" not in page, (path, status, page)
    status, page = direct.request("POST", f"/job/{a}/stop", form={"csrf": "x"}, headers={"X-Remote-User": ALICE})
    assert status == 403, page
    assert psql(ALICE, f"SELECT state FROM jobs WHERE id = {a}")[1] == "queued"


def test_another_unix_user_cannot_use_alices_console_without_its_token(jobs):
    a, _ = jobs
    proc = subprocess.Popen(["runuser", "-u", ALICE, "--", str(HPCFT), "ui", "--port", "0"], env=user_env(ALICE, ENV),
                            cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline().strip()
        m = re.match(r"http://127\.0\.0\.1:(\d+)/\?token=(\S+)$", line)
        assert m, line + (proc.stdout.read() if proc.poll() is not None else "")
        port, token = m.group(1), m.group(2)

        def as_bob(path):  # curl as bob, following redirects with the cookies they set
            r = run_as(BOB, ["curl", "-s", "-L", "-b", "/dev/null", "-w", "\n%{http_code}",
                             f"http://127.0.0.1:{port}{path}"])
            body, _, code = r.stdout.rpartition("\n")
            return int(code), body

        for path in ("/", f"/job/{a}", "/?token=" + "x" * len(token), "/api/states"):
            status, body = as_bob(path)
            assert status in (401, 403) and "alice-held" not in body, (path, status, body[-500:])
        status, body = as_bob(f"/job/{a}?token={token}")  # control: the token is what opens it
        assert status == 200 and "alice-held" in body, (status, body[-500:])
    finally:
        stop(proc)
