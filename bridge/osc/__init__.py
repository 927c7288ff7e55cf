"""Clip mode's OSC side: the protocol (addresses, checks, replies: `protocol`), the UDP
transport (`server`) with per-client reply pacing (`pacing`), who a datagram belongs to
(`clients`), and what each message does (`handlers`). docs/PROTOCOL.md is the reference."""
