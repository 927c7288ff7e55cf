"""The JACK test server itself works: virtual ports from python-rtmidi appear and connect."""

from __future__ import annotations

import time

import rtmidi



def test_virtual_ports_appear_connect_and_carry_midi(jack):
    out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="probe-out")
    out.open_virtual_port("out")
    inp = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name="probe-in")
    inp.open_virtual_port("in")
    try:
        jack.wait_for_port("probe-out:out")
        jack.wait_for_port("probe-in:in")
        jack.connect("probe-out:out", "probe-in:in")
        time.sleep(0.1)
        out.send_message([0x90, 60, 100])
        deadline = time.monotonic() + 2
        message = None
        while message is None and time.monotonic() < deadline:
            message = inp.get_message()
            time.sleep(0.005)
        assert message is not None and message[0] == [0x90, 60, 100]
    finally:
        out.close_port()
        inp.close_port()
        del out, inp
