"""Hypothesis strategies for membership messages."""

from __future__ import annotations

from hypothesis import strategies as st

from membership.messages import (
    META_MAX,
    NAME_MAX,
    UINT63,
    Ack,
    Alive,
    Dead,
    Left,
    Nack,
    Ping,
    PingReq,
    PushPull,
    StateDigest,
    Suspect,
)
from membership.state import Member, Status

names = st.text(min_size=1, max_size=NAME_MAX)
uints = st.integers(min_value=0, max_value=UINT63)
hosts = st.ip_addresses().map(str)  # what a claim may name (membership.messages: IP literals only)
addrs = st.tuples(hosts, st.integers(min_value=1, max_value=65535))
metas = st.binary(max_size=META_MAX)
statuses = st.sampled_from(list(Status))
members = st.builds(Member, names, addrs, uints, statuses, metas)

messages = st.one_of(
    st.builds(Ping, uints, names, addrs),
    st.builds(Ack, uints),
    st.builds(Nack, uints),
    st.builds(PingReq, uints, names, addrs, addrs),
    st.builds(Alive, names, uints, addrs, metas),
    st.builds(Suspect, names, uints, names),
    st.builds(Dead, names, uints, names),
    st.builds(Left, names, uints),
    st.builds(PushPull, names, st.booleans(), addrs, st.lists(members, max_size=8).map(tuple)),
    st.builds(StateDigest, names, addrs, st.integers(min_value=0, max_value=2**64 - 1)),
)
