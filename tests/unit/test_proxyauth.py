"""Team mode's user header (hpcft.web.proxyauth): believed only from a trusted proxy address, and only when it holds
one valid user name. (The same refusals through a real nginx and console: tests/team/test_console_team.py.)"""

import pytest

from hpcft.errors import ConfigError, HpcftError
from hpcft.ledger.access import AccessDenied
from hpcft.web.proxyauth import identify, is_trusted

H = "X-Remote-User"


def one_line(e: HpcftError) -> str:
    assert isinstance(e, HpcftError) and len(str(e).splitlines()) == 1, e
    return str(e)


@pytest.mark.parametrize("host, trusted", [
    ("127.0.0.1", ["127.0.0.1"]),
    ("10.1.2.77", ["192.168.0.1", "10.1.2.0/24"]),
    ("::1", ["::1"]),
    ("::ffff:127.0.0.1", ["127.0.0.1"]),  # a dual-stack socket's view of an IPv4 proxy
])
def test_trusted_proxy_passes_the_user(host, trusted):
    assert identify({H: "hpcft-bob"}, host, trusted, H) == "hpcft-bob"


@pytest.mark.parametrize("host, trusted", [
    ("127.0.0.2", ["127.0.0.1"]),
    ("10.1.3.1", ["10.1.2.0/24"]),
    ("::1", ["127.0.0.1"]),
    ("", ["127.0.0.1"]),
    (None, ["127.0.0.1"]),
    ("testclient", ["127.0.0.1"]),  # not an address at all
    ("127.0.0.1", []),  # nothing trusted: nobody's header counts
])
def test_header_from_anywhere_else_is_refused(host, trusted):
    with pytest.raises(AccessDenied) as e:
        identify({H: "hpcft-alice"}, host, trusted, H)
    assert "not a trusted proxy" in one_line(e.value)


@pytest.mark.parametrize("value, why", [
    (None, "no authenticated user"),
    ("", "no authenticated user"),
    ("  ", "no authenticated user"),
    ("alice@EXAMPLE.ORG", "not a user name"),
    ("alice bob", "not a user name"),
    ("-alice", "not a user name"),
    ("a" * 33, "not a user name"),
    ("bob\nX-Other: 1", "not a user name"),
    ("'; DROP TABLE jobs; --", "not a user name"),
])
def test_header_must_hold_one_valid_name(value, why):
    headers = {} if value is None else {H: value}
    with pytest.raises(AccessDenied) as e:
        identify(headers, "127.0.0.1", ["127.0.0.1"], H)
    assert why in one_line(e.value)


def test_header_name_is_case_insensitive_and_configurable():
    assert identify({"x-remote-user": "carol"}, "127.0.0.1", ["127.0.0.1"], H) == "carol"
    assert identify({"X-Forwarded-User": "carol", H: "mallory"}, "127.0.0.1", ["127.0.0.1"],
                    "X-Forwarded-User") == "carol"


def test_a_repeated_header_is_refused():
    starlette = pytest.importorskip("starlette.datastructures")
    headers = starlette.Headers(raw=[(b"x-remote-user", b"hpcft-bob"), (b"x-remote-user", b"hpcft-alice")])
    with pytest.raises(AccessDenied) as e:
        identify(headers, "127.0.0.1", ["127.0.0.1"], H)
    assert "given 2 times" in one_line(e.value)
    single = starlette.Headers(raw=[(b"x-remote-user", b"hpcft-bob")])
    assert identify(single, "127.0.0.1", ["127.0.0.1"], H) == "hpcft-bob"


def test_a_bad_trusted_proxy_setting_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as e:
        is_trusted("127.0.0.1", ["nginx.example.org"])
    assert "--trusted-proxy nginx.example.org: not an IP address" in one_line(e.value)


def test_acting_as_a_user_needs_the_postgresql_ledger(tmp_path):
    """Ledger.as_user (what team mode runs each request through) is refused in one line on SQLite, where no
    row-level security could make a request its user's."""
    from hpcft.ledger.store import Ledger

    with pytest.raises(HpcftError) as e:
        Ledger(f"sqlite:///{tmp_path}/ledger.db").as_user("hpcft-bob")
    assert one_line(e.value).startswith("team mode needs the PostgreSQL ledger")
