import pytest

from hpcft.states import LIVE, TERMINAL, State, can_transition, is_terminal


def test_exactly_the_six_states():
    assert [s.value for s in State] == ["queued", "running", "error", "stopped", "expired", "success"]
    assert LIVE | TERMINAL == set(State)


@pytest.mark.parametrize("src,dst,ok", [
    ("queued", "running", True),
    ("queued", "stopped", True),
    ("queued", "success", True),   # finished between two syncs
    ("running", "success", True),
    ("running", "expired", True),
    ("running", "queued", True),   # requeued / preempted
    ("success", "error", False),   # the first terminal state wins
    ("stopped", "error", False),   # a late failure never overrides the user's stop
    ("expired", "success", False),
    ("error", "queued", True),     # resume / retry = new attempt
    ("stopped", "running", False),
])
def test_transitions(src, dst, ok):
    assert can_transition(src, dst) is ok


def test_terminal():
    assert is_terminal("success") and is_terminal(State.expired)
    assert not is_terminal("running")
