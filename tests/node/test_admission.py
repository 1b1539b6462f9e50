"""The unauthenticated peers' budget, penalties and log throttle
(node/admission.py), driven with a fake clock."""
import pytest

from jmig.node.admission import (EVICT_AFTER, GARBAGE, MAX_PREAUTH, MAX_PREAUTH_PER_HOST,
                                 PENALTY_DRAIN, PENALTY_LIMIT, PENALTY_MAX, REFUSAL_PENALTY,
                                 SLOW, TRUST_SECONDS, WRONG, Admission, Throttle)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def adm(clock):
    return Admission(clock=clock)


def fill(adm, hosts, evicted=None):
    tickets = []
    for h in hosts:
        t = adm.enter(h, (lambda h=h: evicted.append(h)) if evicted is not None else None)
        assert t is not None, h
        tickets.append(t)
    return tickets


def test_one_address_gets_its_share_and_no_more(adm):
    fill(adm, ["10.0.0.1"] * MAX_PREAUTH_PER_HOST)
    assert adm.enter("10.0.0.1", None) is None
    assert adm.enter("10.0.0.2", None) is not None
    assert adm.refused == 1


def test_a_finished_handshake_frees_its_place(adm):
    tickets = fill(adm, ["10.0.0.1"] * MAX_PREAUTH_PER_HOST)
    adm.leave(tickets[0])
    assert adm.enter("10.0.0.1", None) is not None
    adm.leave(tickets[0])                         # leaving twice is harmless
    assert adm.preauth == MAX_PREAUTH_PER_HOST


def full_budget(adm, evicted):
    hosts = [f"10.1.{i // 4}.{i % 4}" for i in range(MAX_PREAUTH)]
    return fill(adm, hosts, evicted)


def test_a_full_budget_refuses_a_newcomer_while_every_handshake_is_young(adm, clock):
    evicted = []
    full_budget(adm, evicted)
    clock.t += EVICT_AFTER / 2
    assert adm.enter("10.9.9.9", None) is None
    assert evicted == []


def test_a_newcomer_takes_the_place_of_the_oldest_handshake_that_dawdles(adm, clock):
    evicted = []
    tickets = full_budget(adm, evicted)
    clock.t += EVICT_AFTER
    assert adm.enter("10.9.9.9", None) is not None
    assert evicted == [tickets[0].host]
    assert adm.preauth == MAX_PREAUTH


def test_a_clean_newcomer_displaces_a_suspect_at_once(adm, clock):
    evicted = []
    tickets = full_budget(adm, evicted)
    adm.failed(tickets[5].host, WRONG)            # that address failed lately
    assert adm.enter("10.9.9.9", None) is not None
    assert evicted == [tickets[5].host]


def test_a_trusted_address_displaces_an_untrusted_one_and_is_never_displaced_for_age(adm, clock):
    evicted = []
    adm.authenticated("10.8.8.8")
    tickets = full_budget(adm, evicted)
    assert adm.enter("10.8.8.8", None) is not None       # a clean one made room
    assert evicted == [tickets[0].host]
    # A trusted handshake that takes long is not evicted for its age.
    for t in tickets[1:]:
        adm.leave(t)
    fill(adm, ["10.8.8.8"] * (MAX_PREAUTH - 1))
    clock.t += 10 * EVICT_AFTER
    assert adm.enter("10.7.7.7", None) is None
    # Trusted addresses are not held to the per-address share.
    assert adm._by_host["10.8.8.8"] == MAX_PREAUTH > MAX_PREAUTH_PER_HOST


def test_trust_expires(adm, clock):
    adm.authenticated("10.8.8.8")
    assert adm.trusted("10.8.8.8")
    clock.t += TRUST_SECONDS + 1
    assert not adm.trusted("10.8.8.8")


def test_failures_penalize_an_address_until_the_penalty_drains(adm, clock):
    host = "10.2.2.2"
    n = int(PENALTY_LIMIT // GARBAGE)
    for _ in range(n - 1):
        adm.failed(host, GARBAGE)
    assert not adm.penalized(host)
    clock.t += 0.5 * GARBAGE / PENALTY_DRAIN         # what drained meanwhile is forgiven
    adm.failed(host, GARBAGE)
    assert not adm.penalized(host)
    adm.failed(host, GARBAGE)
    assert adm.penalized(host) and adm.blocked() == [host]
    assert not adm.penalized("10.2.2.3")
    # Reaching the limit shuts the address out for a long while, not until
    # it drains just below the limit.
    clock.t += (PENALTY_MAX - PENALTY_LIMIT) / PENALTY_DRAIN - 0.5
    assert adm.penalized(host)
    clock.t += 1.0
    assert not adm.penalized(host) and adm.blocked() == []


def test_reaching_the_limit_is_reported_once(clock):
    calls = []
    adm = Admission(clock=clock, on_penalized=lambda: calls.append(1))
    for _ in range(3 * int(PENALTY_LIMIT)):
        adm.failed("10.2.2.2", WRONG)
    assert calls == [1]


def test_the_penalty_stops_at_its_maximum(adm, clock):
    host = "10.2.2.2"
    for _ in range(1000):
        adm.failed(host, SLOW)
    clock.t += (PENALTY_MAX - PENALTY_LIMIT) / PENALTY_DRAIN + 0.5
    assert not adm.penalized(host)


def test_refusals_weigh_less_than_failures(adm, clock):
    host = "10.3.3.3"
    fill(adm, [host] * MAX_PREAUTH_PER_HOST)
    refusals = int(PENALTY_LIMIT / REFUSAL_PENALTY)
    for _ in range(refusals - 1):
        assert adm.enter(host, None) is None
    assert not adm.penalized(host)
    assert adm.enter(host, None) is None
    assert adm.penalized(host)


def test_refusals_do_not_penalize_a_trusted_address(adm, clock):
    trusted = "10.4.4.4"
    adm.authenticated(trusted)
    fill(adm, [trusted] * MAX_PREAUTH)
    for _ in range(10 * int(PENALTY_LIMIT / REFUSAL_PENALTY)):
        assert adm.enter(trusted, None) is None
    assert not adm.penalized(trusted)


def test_the_throttle_lets_a_burst_through_then_counts():
    clock = Clock()
    th = Throttle(burst=2, interval=10.0, clock=clock)
    assert [th.take("a") for _ in range(5)] == [1, 1, 0, 0, 0]
    assert th.take("b") == 1
    clock.t += 10
    assert th.take("a") == 4                     # itself and the three held back
    assert th.take("a") == 1
    assert th.take("a") == 0
