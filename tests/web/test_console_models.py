"""The console's Models pages through starlette's TestClient on a real SQLite ledger, with a tiny LoRA job really
trained and published by the CLI (as alice): the list has `hpcft models list`'s columns, a version's page the rows
of `hpcft models show` and the model card; verify finds a flipped byte (corrupt) and the restored file (published
again); a failed publish is republished and a version deleted by its owner through a confirmation page; another user
(bob) sees no owner's button and a forged POST gets 403 with nothing changed; a POST without the session's CSRF
token gets 403; the team console refuses republish and delete in one line.

The tests of this module share one HPCFT_HOME and run in file order (each builds on the one before).
"""

import html
import os
import re
import subprocess
from pathlib import Path

import pytest

from support import hpcft_cli

pytestmark = [pytest.mark.train, pytest.mark.slow]
TOKEN = "test-token-0123456789"
FAST = ["executor=local", "training.sequence_length=64", "training.batch_size=8", "training.learning_rate=0.01"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("console-models") / "hpcft-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPCFT_HOME", str(home))
        mp.setenv("HPCFT_USER", "alice")
        for var in ("HPCFT_DB_URL", "HPCFT_RUNS", "HPCFT_REGISTRY"):
            mp.delenv(var, raising=False)
        yield home


def run(args, timeout=600):
    return subprocess.run(hpcft_cli() + list(args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def ok(r):
    assert r.returncode == 0, (r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    return r


@pytest.fixture(scope="module")
def published(home):
    """Job 1 (alice's tiny LoRA, 2 steps), published as tiny@1; bob shares alice's project."""
    from hpcft.ledger.store import Ledger

    ok(run(["submit", *FAST, "training.max_steps=2", "name=web-tiny", "--wait"]))
    ok(run(["publish", "1", "--name", "tiny"]))
    Ledger().set_projects({"default": ["alice", "bob"]})
    return home / "registry" / "tiny" / "v1"


def client():
    from starlette.testclient import TestClient

    from hpcft.web.app import create_app

    return TestClient(create_app(token=TOKEN))


def logged_in():
    c = client()
    assert c.get(f"/?token={TOKEN}", follow_redirects=False).status_code == 303
    return c


def csrf_of(c, path="/models"):
    return re.search(r'name="csrf-token" content="([0-9a-f]+)"', c.get(path).text).group(1)


def row(ref):
    from hpcft.ledger import assets as db
    from hpcft.ledger.store import Ledger

    return next(r for r in db.search(Ledger()) if r.ref == ref)


def text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def table(page: str, table_id: str):
    """The rows of <table id=table_id> as lists of cell texts."""
    body = re.search(rf'<table[^>]*id="{table_id}".*?</table>', page, re.S).group(0)
    return [[text(c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", tr, re.S)]
            for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def flash_of(page: str) -> str:
    return text(re.search(r'<p class="flash" id="flash">(.*?)</p>', page, re.S).group(1))


def state_of(page: str) -> str:
    return text(re.search(r'id="model-state">(.*?)</span>', page).group(1))


def flip_byte(path: Path) -> None:
    mode = path.stat().st_mode
    os.chmod(path, 0o600)
    with open(path, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    os.chmod(path, mode)


def test_the_list_has_the_columns_of_models_list(published):
    cli = ok(run(["models", "list"])).stdout.splitlines()
    page = logged_in().get("/models").text
    rows = table(page, "models")
    assert [h.upper() for h in rows[0]] == re.split(r"\s{2,}", cli[0])
    assert rows[1:] == [re.split(r"\s{2,}", line) for line in cli[1:]]
    assert rows[1][:2] == ["tiny@1", "published"]
    assert 'href="/models/tiny/1"' in page and 'href="/job/1"' in page


def test_the_version_page_shows_the_rows_of_models_show_and_the_card(published):
    from hpcft.ledger.store import Ledger
    from hpcft.registry.labels import set_tags

    set_tags(Ledger(), "tiny@1", ["note=<script>alert(1)</script>"])  # shown literally
    cli = ok(run(["models", "show", "tiny@1"])).stdout.rstrip("\n").splitlines()
    assert cli[0] == "model asset tiny@1: published"
    expected = [(line[2:13].strip(), line[14:]) for line in cli[1:]]
    c = logged_in()
    page = c.get("/models/tiny/1").text
    assert state_of(page) == "published"
    lineage = [text(x) for x in re.findall(r"<li>(.*?)</li>", re.search(r'<ol id="lineage">(.*?)</ol>', page,
                                                                        re.S).group(1), re.S)]
    shown = [tuple(r) for r in table(page, "detail")] + [("lineage", x) for x in lineage]
    assert shown == expected
    assert lineage[0] == "tiny@1: final of job 1 (web-tiny, lora, owner alice)"
    assert "<script>alert(1)</script>" not in page and "note=&lt;script&gt;alert(1)&lt;/script&gt;" in page
    card = re.search(r'<pre id="card" class="card">(.*?)</pre>', page, re.S).group(1)
    assert html.unescape(card) == (published / "README.md").read_text() and "tiny" in card
    assert 'id="act-verify"' in page and 'id="act-delete"' in page and 'id="act-republish"' not in page
    assert c.get("/models/tiny/9").status_code == 404


def test_another_user_sees_no_owner_action_and_a_forged_post_is_refused(published, monkeypatch):
    monkeypatch.setenv("HPCFT_USER", "bob")
    c = logged_in()
    page = c.get("/models/tiny/1").text
    assert state_of(page) == "published" and "owner alice" in page
    assert 'id="act-verify"' in page and 'id="act-delete"' not in page and 'id="act-republish"' not in page
    token = csrf_of(c)
    for action in ("delete", "delete/do"):
        r = c.post(f"/models/tiny/1/{action}", data={"csrf": token})
        assert r.status_code == 403, (action, r.text[-800:])
        assert "model asset tiny@1 (owner alice): you (bob) may use it but not delete it" in r.text
    r = c.post("/models/tiny/1/republish", data={"csrf": token})
    assert r.status_code == 403 and "you (bob) may use it but not republish it" in r.text
    assert row("tiny@1").state == "published" and (published / "README.md").is_file()


def test_a_post_without_the_sessions_csrf_token_is_refused(published):
    c, other = logged_in(), logged_in()
    for action in ("verify", "republish", "delete", "delete/do"):
        for data in ({}, {"csrf": "0" * 64}, {"csrf": csrf_of(other)}):
            r = c.post(f"/models/tiny/1/{action}", data=data)
            assert r.status_code == 403 and "CSRF token is missing or wrong" in r.text, (action, data)
    assert row("tiny@1").state == "published" and (published / "README.md").is_file()


def test_verify_finds_a_flipped_byte_and_the_restored_file(published):
    c = logged_in()
    weights = published / "adapter_model.safetensors"
    flip_byte(weights)
    page = c.post("/models/tiny/1/verify", data={"csrf": csrf_of(c)}).text
    assert flash_of(page) == ("error: model asset tiny@1 is corrupt: 1 file(s) do not match SHA256SUMS: "
                              "adapter_model.safetensors: checksum differs")
    assert state_of(page) == "corrupt" and row("tiny@1").state == "corrupt"
    assert table(c.get("/models").text, "models")[1][:2] == ["tiny@1", "corrupt"]
    flip_byte(weights)  # restored
    page = c.post("/models/tiny/1/verify", data={"csrf": csrf_of(c)}).text
    assert flash_of(page) == "verified: every file of tiny@1 matches SHA256SUMS (marked published again)"
    assert state_of(page) == "published" and row("tiny@1").state == "published"


def test_the_owner_republishes_a_failed_version(published):
    from hpcft.ledger.store import Ledger
    from hpcft.registry.publish import publish

    blocker = Path(row("tiny@1").path).parent.parent / "tiny-b"
    blocker.write_text("a file where the name's directory goes")
    assert publish(Ledger(), 1, name="tiny-b").state == "publish_failed"
    c = logged_in()
    page = c.get("/models/tiny-b/1").text
    assert state_of(page) == "publish_failed" and "cannot write" in page
    assert 'id="act-republish"' in page and 'id="act-verify"' not in page
    blocker.unlink()
    page = c.post("/models/tiny-b/1/republish", data={"csrf": csrf_of(c)}).text
    assert flash_of(page).startswith("published tiny-b@1 (lora, ")
    assert state_of(page) == "published" and (blocker / "v1" / "README.md").is_file()


def test_the_owner_deletes_a_version_through_the_confirmation_page(published):
    c = logged_in()
    token = csrf_of(c)
    d = Path(row("tiny-b@1").path)
    r = c.post("/models/tiny-b/1/delete", data={"csrf": token})
    assert r.status_code == 200 and "Delete model asset" in r.text
    listed = dict((k, v) for k, v in table(r.text, "confirm-list"))
    assert listed["version"] == "tiny-b@1 (published)" and listed["path"] == str(d)
    assert row("tiny-b@1").state == "published" and d.is_dir()  # the confirmation changes nothing
    r = c.post("/models/tiny-b/1/delete/do", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/models"
    page = c.get("/models").text
    assert flash_of(page) == "deleted tiny-b@1" and "tiny-b@1" not in page.replace("deleted tiny-b@1", "")
    assert row("tiny-b@1").state == "deleted" and not d.exists()
    assert state_of(c.get("/models/tiny-b/1").text) == "deleted"  # the row stays: the number is never reused


def test_the_team_console_refuses_republish_delete_and_verify(published):
    from hpcft.ledger.access import AccessDenied
    from hpcft.ledger.store import Ledger
    from hpcft.web import models

    ledger = Ledger()
    assert models.actions(ledger, row("tiny@1"), team=False) == {"verify": True, "republish": False, "delete": True}
    assert not any(models.actions(ledger, row("tiny@1"), team=True).values())
    for fn, what in ((models.delete, "delete"), (models.delete_check, "delete"), (models.republish, "republish"),
                     (models.verify, "verify")):
        with pytest.raises(AccessDenied, match=f"^{what} tiny@1: the team console does not {what} model versions"):
            fn(ledger, "tiny@1", True)
    assert row("tiny@1").state == "published" and (published / "README.md").is_file()
