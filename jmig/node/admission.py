"""Who may hold a connection to a node, before and after authentication.

Unauthenticated peers get a small budget of their own, as SSH's
MaxStartups and PerSourcePenalties give them.  Addresses rank as
*trusted* (a handshake from there succeeded in the last TRUST_SECONDS),
*suspect* (recent failures or refusals: its penalty has not drained) or
*clean* (neither).

- At most MAX_PREAUTH connections in the handshake at once over all ports,
  each with a short deadline (wire.SERVER_HANDSHAKE_TIMEOUT); at most
  MAX_PREAUTH_PER_HOST of them from one address unless it is trusted.  A
  connection over its address's share is refused at once.  When the whole
  budget is full, a newcomer takes the place of the oldest handshake of the
  lowest rank if that rank is below its own, or if that handshake is not
  trusted and has been at it for more than EVICT_AFTER (an honest client
  finishes in a few milliseconds); the evicted one is told "busy".
  Otherwise the newcomer is refused.
- An address whose connections keep failing (wrong secret, garbage, a
  deadline missed) or, unless trusted, keep being refused is refused at
  accept, before any work is spent on it: each failure adds to the
  address's penalty (GARBAGE, SLOW or WRONG) and each refusal
  REFUSAL_PENALTY (a burst of honest clients that all arrive at once is
  refused too, but backs off), which drains at PENALTY_DRAIN per second, and while
  it is at PENALTY_LIMIT or above new connections from there are closed at
  once.  An honest client that fails now and then never gets near the
  limit; a flood does within milliseconds, and then costs the node an
  accept and a close per connection, or nothing once `blocked()` has shut
  the door in the kernel (listener.block).  Reaching the limit sets the
  penalty to PENALTY_MAX, so a flood stays shut out for a minute (and
  comes back to be shut out again), not for the moment it takes to drain
  below the limit.

Authenticated connections count against a separate, larger limit that
unauthenticated peers never touch.  `Throttle` keeps the log of failures
and refusals readable under a flood: a few lines per address, then a
count.

An attacker that shares an honest client's address (the same machine)
shares its standing: that is the price of judging peers by address.
"""
from __future__ import annotations

import time
from collections import Counter, OrderedDict

import attrs

MAX_PREAUTH = 32
MAX_PREAUTH_PER_HOST = 8
MAX_SESSIONS = 256
EVICT_AFTER = 0.25                 # seconds in the handshake before a newcomer may evict it
PENALTY_LIMIT = 32.0               # failures in a burst before an address is refused
PENALTY_DRAIN = 2.0                # ... forgiven per second
PENALTY_MAX = 120.0
# What each event adds to an address's penalty.
GARBAGE = 4.0                      # bytes that are no jmig hello: not a jmig peer at all
SLOW = 2.0                         # closed or silent until the handshake's deadline
WRONG = 1.0                        # a jmig peer with the wrong secret, version or port
REFUSAL_PENALTY = 0.5              # refused for want of room (an honest burst backs off)
TRUST_SECONDS = 300.0
MAX_TRACKED = 4096                 # addresses remembered (the least recent are forgotten)
LOG_INTERVAL = 10.0
LOG_BURST = 8                      # lines per address per LOG_INTERVAL
BUSY = "node busy: too many unauthenticated connections"
PENALIZED = "node busy: too many failed connections from this address; try again later"


@attrs.define(eq=False)
class Ticket:
    """One connection in its handshake; evict() is called to push it out."""
    host: str
    evict: object                      # callable, no arguments
    since: float = 0.0


@attrs.define
class _Penalty:
    level: float = 0.0
    at: float = 0.0                    # when level was last brought up to date


class Admission:
    def __init__(self, max_preauth: int = MAX_PREAUTH,
                 per_host: int = MAX_PREAUTH_PER_HOST, max_sessions: int = MAX_SESSIONS,
                 clock=time.monotonic, on_penalized=None):
        """on_penalized(): called when an address reaches PENALTY_LIMIT."""
        self.on_penalized = on_penalized
        self.max_preauth = max_preauth
        self.per_host = per_host
        self.max_sessions = max_sessions
        self.clock = clock
        self._waiting: OrderedDict[Ticket, None] = OrderedDict()   # oldest first
        self._by_host: Counter[str] = Counter()
        self._penalties: OrderedDict[str, _Penalty] = OrderedDict()
        self._trusted: OrderedDict[str, float] = OrderedDict()    # host -> until
        self.sessions = 0
        self.refused = 0               # turned away as busy (refused, evicted, penalized)

    @property
    def preauth(self) -> int:
        return len(self._waiting)

    # -- penalties ------------------------------------------------------------------
    def _penalty(self, host: str) -> _Penalty:
        p = self._penalties.get(host)
        now = self.clock()
        if p is None:
            p = self._penalties[host] = _Penalty(at=now)
            if len(self._penalties) > MAX_TRACKED:
                self._penalties.popitem(last=False)
        else:
            self._penalties.move_to_end(host)
            p.level = max(0.0, p.level - (now - p.at) * PENALTY_DRAIN)
            p.at = now
        return p

    def penalized(self, host: str) -> bool:
        """True (and counted) when host is refused at accept for now."""
        if host not in self._penalties or self._penalty(host).level < PENALTY_LIMIT:
            return False
        self.refused += 1
        return True

    def trusted(self, host: str) -> bool:
        until = self._trusted.get(host)
        if until is None:
            return False
        if until < self.clock():
            del self._trusted[host]
            return False
        return True

    def authenticated(self, host: str) -> None:
        """A handshake from host succeeded: trust it for a while."""
        self._trusted[host] = self.clock() + TRUST_SECONDS
        self._trusted.move_to_end(host)
        if len(self._trusted) > MAX_TRACKED:
            self._trusted.popitem(last=False)

    def failed(self, host: str, weight: float) -> None:
        """A handshake from host failed: GARBAGE, SLOW or WRONG."""
        self._raise(self._penalty(host), weight)

    def _raise(self, p: _Penalty, by: float) -> None:
        p.level += by
        if p.level >= PENALTY_LIMIT:
            # Shut out: for PENALTY_MAX / PENALTY_DRAIN seconds, from now.
            was = p.level - by
            p.level = PENALTY_MAX
            if was < PENALTY_LIMIT and self.on_penalized is not None:
                self.on_penalized()

    def blocked(self) -> list[str]:
        """The addresses refused at accept now."""
        return sorted(h for h in list(self._penalties)
                if self._penalties[h].level >= PENALTY_LIMIT
                and self._penalty(h).level >= PENALTY_LIMIT)

    # -- the handshake budget ----------------------------------------------------------
    def suspect(self, host: str) -> bool:
        """host failed or was refused lately (its penalty has not drained)."""
        return host in self._penalties and self._penalty(host).level >= 1.0

    def enter(self, host: str, evict) -> Ticket | None:
        """A new connection from host: its ticket, or None to refuse it now.
        May evict an older handshake (calling its evict())."""
        if self._by_host[host] >= self.per_host and not self.trusted(host):
            self._count_refusal(host)
            return None
        now = self.clock()
        if len(self._waiting) >= self.max_preauth:
            victim = self._victim(host, now)
            if victim is None:
                self._count_refusal(host)
                return None
            self.leave(victim)
            self._count_refusal(victim.host)
            victim.evict()
        t = Ticket(host, evict, now)
        self._waiting[t] = None
        self._by_host[host] += 1
        return t

    def _rank(self, host: str) -> int:
        """2 trusted, 1 clean, 0 suspect (see the module's docstring)."""
        if self.trusted(host):
            return 2
        return 0 if self.suspect(host) else 1

    def _victim(self, host: str, now: float) -> Ticket | None:
        """The handshake a newcomer from host may push out, if any: the
        oldest of the lowest rank, if that rank is below the newcomer's or
        it is not trusted and has been at it for EVICT_AFTER."""
        mine = self._rank(host)
        if mine == 0:                      # a suspect newcomer (a flood): only by age
            lowest = next(iter(self._waiting))
            rank = self._rank(lowest.host)
        else:
            lowest = min(self._waiting, key=lambda t: self._rank(t.host))   # the oldest of them
            rank = self._rank(lowest.host)
        if rank < mine or (rank < 2 and now - lowest.since >= EVICT_AFTER):
            return lowest
        return None

    def _count_refusal(self, host: str) -> None:
        self.refused += 1
        if not self.trusted(host):
            self._raise(self._penalty(host), REFUSAL_PENALTY)

    def leave(self, t: Ticket) -> None:
        """The handshake ended (either way)."""
        if t not in self._waiting:
            return                         # evicted earlier
        del self._waiting[t]
        self._by_host[t.host] -= 1
        if not self._by_host[t.host]:
            del self._by_host[t.host]

    # -- authenticated connections -------------------------------------------------------
    def open_session(self) -> bool:
        """An authenticated connection: False when there are too many."""
        if self.sessions >= self.max_sessions:
            return False
        self.sessions += 1
        return True

    def close_session(self) -> None:
        self.sessions -= 1


class Throttle:
    """At most `burst` events per key in each `interval` get through; the
    others are counted, and the next one through reports how many."""

    def __init__(self, burst: int = LOG_BURST, interval: float = LOG_INTERVAL,
                 clock=time.monotonic, size: int = MAX_TRACKED):
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self.size = size
        self._keys: OrderedDict[object, list] = OrderedDict()  # key -> [start, passed, held]

    def take(self, key) -> int:
        """0: hold this event back; n > 0: let it through, standing for
        itself and the n - 1 held back before it."""
        now = self.clock()
        k = self._keys.get(key)
        if k is None:
            k = self._keys[key] = [now, 0, 0]
            if len(self._keys) > self.size:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        if now - k[0] >= self.interval:
            k[0], k[1] = now, 0
        k[2] += 1
        if k[1] >= self.burst:
            return 0
        k[1] += 1
        n, k[2] = k[2], 0
        return n
