"""The per-IP counts of a process's sockets: capped, and each place given back once."""

from __future__ import annotations

import pytest

from weflux.realtime.caps import SocketCaps, TooManySockets

IP, OTHER_IP = "203.0.113.7", "198.51.100.9"


def test_an_address_past_its_cap_is_refused_and_counts_nothing() -> None:
    # Given an address holding its cap of 2 sockets, both past connection_init
    caps = SocketCaps(per_ip=2, pending_per_ip=5)
    held = [caps.admit(IP), caps.admit(IP)]
    for admission in held:
        admission.initialised()
    # When a third is admitted, then it is refused and nothing more is counted
    with pytest.raises(TooManySockets, match="Too many open sockets from this address"):
        caps.admit(IP)
    assert (caps.open_from(IP), caps.pending_from(IP)) == (2, 0)
    # And another address is not refused
    caps.admit(OTHER_IP).release()
    # When one of the two ends, then one more is admitted
    held[0].release()
    caps.admit(IP)
    assert caps.open_from(IP) == 2


def test_sockets_before_connection_init_have_a_cap_of_their_own() -> None:
    caps = SocketCaps(per_ip=10, pending_per_ip=2)
    first, _ = caps.admit(IP), caps.admit(IP)
    with pytest.raises(TooManySockets, match="waiting for connection_init"):
        caps.admit(IP)
    first.initialised()
    caps.admit(IP)
    assert (caps.open_from(IP), caps.pending_from(IP)) == (3, 2)


def test_each_place_is_given_back_once_and_no_address_stays() -> None:
    # Given sockets that end in every order: released twice, initialised after release
    caps = SocketCaps(per_ip=3, pending_per_ip=3)
    for _ in range(100):
        pending, ready, twice = caps.admit(IP), caps.admit(IP), caps.admit(OTHER_IP)
        ready.initialised()
        ready.initialised()
        for admission in (pending, ready, twice, twice):
            admission.release()
        pending.initialised()
    # Then nothing stays counted, and no address keeps an entry
    assert len(caps) == 0
    assert (caps._open, caps._pending) == ({}, {})
