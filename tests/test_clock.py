"""The host's clock (bridge/live/clock.py) from synthetic tick times: no threads, no sleeping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backline.bridge.live.clock import (CLOCK, CONTINUE, SONG_POSITION, START, STOP, Clock, MidiClockFollower,
                                   fit_ticks)

T0 = 1000.0


class Fed:
    """A Clock driven by a MidiClockFollower, with its events recorded."""

    def __init__(self, tempo: float = 100.0) -> None:
        self.clock = Clock(tempo=tempo, now=lambda: T0)
        self.follower = MidiClockFollower(self.clock)
        self.events = []
        self.clock.add_listener(lambda e: self.events.append((e.kind, round(e.beat, 6))))

    def ticks(self, n: int, bpm: float, t: float, jitter_s: float = 0.0, seed: int = 0) -> float:
        """n ticks at `bpm` from time t; returns the time the next tick would come."""
        rng = np.random.default_rng(seed)
        spacing = 60.0 / (bpm * 24)
        for i in range(n):
            self.follower.feed([CLOCK], t + i * spacing + rng.uniform(-jitter_s, jitter_s))
        return t + n * spacing


def test_internal_clock_maps_beats_and_times_both_ways():
    clock = Clock(tempo=120, now=lambda: T0)
    assert not clock.playing and clock.time_at(4.0) == math.inf
    clock.start(0.0, t=T0)
    assert clock.beat_at(T0 + 1.0) == pytest.approx(2.0)
    assert clock.time_at(8.0) == pytest.approx(T0 + 4.0)
    clock.set_tempo(60, t=T0 + 1.0)  # the position at the change stays
    assert clock.beat_at(T0 + 1.0) == pytest.approx(2.0)
    assert clock.time_at(4.0) == pytest.approx(T0 + 3.0)
    clock.stop(t=T0 + 2.0)
    assert clock.beat_at(T0 + 50) == pytest.approx(3.0) and clock.time_at(5.0) == math.inf
    clock.resume(t=T0 + 10.0)
    assert clock.beat_at(T0 + 11.0) == pytest.approx(4.0)
    clock.locate(16.0, t=T0 + 12.0)
    assert clock.beat_at(T0 + 13.0) == pytest.approx(17.0)
    with pytest.raises(ValueError):
        clock.set_tempo(0)


def test_perfect_ticks_give_the_exact_tempo_and_phase():
    fed = Fed(tempo=100)
    fed.follower.feed([START], T0 - 0.005)
    fed.ticks(48, 137.0, T0)
    assert fed.clock.playing
    assert fed.clock.tempo == pytest.approx(137.0, abs=1e-6)
    assert fed.clock.time_at(0.0) == pytest.approx(T0, abs=1e-9)  # beat 0 = the first tick after Start
    assert fed.clock.time_at(10.0) == pytest.approx(T0 + 10 * 60 / 137, abs=1e-9)
    assert fed.events[0] == ("start", 0.0) and {k for k, _ in fed.events[1:]} <= {"tempo"}


def test_jitter_of_two_ms_does_not_move_due_times():
    fed = Fed(tempo=120)
    fed.follower.feed([START], T0)
    end = fed.ticks(96, 120.0, T0, jitter_s=0.002, seed=1)
    assert fed.clock.tempo == pytest.approx(120.0, rel=0.003)
    # A beat one beat ahead of the last tick is due within a millisecond of the truth.
    beat = 96 / 24 + 1
    assert abs(fed.clock.time_at(beat) - (T0 + beat * 0.5)) < 0.001
    assert end == pytest.approx(T0 + 2.0)


def test_an_outlier_tick_is_rejected():
    fed = Fed(tempo=120)
    fed.follower.feed([START], T0)
    spacing = 0.5 / 24
    for i in range(47):
        late = 0.012 if i == 40 else 0.0  # one tick delayed 12 ms by a busy machine
        fed.follower.feed([CLOCK], T0 + i * spacing + late)
    assert fed.follower.fit.used == 46
    assert fed.clock.tempo == pytest.approx(120.0, rel=1e-6)


def test_a_tempo_change_is_followed_within_a_few_ticks():
    fed = Fed(tempo=120)
    fed.follower.feed([START], T0)
    t = fed.ticks(48, 120.0, T0)
    # The tempo jumps to 90: the ticks from index 48 on come further apart.
    spacing = 60 / (90 * 24)
    for i in range(12):
        fed.follower.feed([CLOCK], t + i * spacing)
    assert fed.clock.tempo == pytest.approx(90.0, rel=1e-6)
    last = t + 11 * spacing
    assert fed.clock.time_at((48 + 11) / 24) == pytest.approx(last, abs=1e-6)


def test_stop_song_position_and_continue():
    fed = Fed(tempo=120)
    fed.follower.feed([START], T0)
    t = fed.ticks(30, 120.0, T0)  # ticks 0..29: the next would be tick 30 = beat 1.25
    fed.follower.feed([STOP], t - 0.001)
    assert not fed.clock.playing
    assert fed.clock.beat_at(t + 5) == pytest.approx(30 / 24)
    # Song Position 36 sixteenths = beat 9 (LSB first, 7 bits each).
    fed.follower.feed([SONG_POSITION, 36, 0], t + 1)
    assert fed.clock.beat_at(t + 2) == pytest.approx(9.0)
    fed.follower.feed([CONTINUE], t + 3)
    assert not fed.clock.playing  # the next tick is the position
    fed.ticks(10, 120.0, t + 3.01)
    assert fed.clock.playing
    assert fed.clock.time_at(9.0) == pytest.approx(t + 3.01, abs=1e-6)
    kinds = [k for k, _ in fed.events if k != "tempo"]
    assert kinds == ["start", "stop", "locate", "continue"]
    assert ("locate", 9.0) in fed.events and ("stop", 1.25) in fed.events


def test_ticks_while_stopped_only_set_the_tempo():
    fed = Fed(tempo=120)
    fed.ticks(48, 150.0, T0)
    assert not fed.clock.playing
    assert fed.clock.tempo == pytest.approx(150.0)
    assert fed.clock.time_at(0.0) == math.inf


def test_fit_ticks_needs_three_ticks_and_a_positive_slope():
    assert fit_ticks(np.array([0.0, 1.0]), np.array([0.0, 0.1]), 0.002) is None
    fit = fit_ticks(np.arange(5.0), np.arange(5.0) * 0.02 + 3.0, 0.002)
    assert fit.bpm == pytest.approx(125.0) and fit.time_at_last == pytest.approx(3.08)


def test_non_clock_messages_are_not_taken():
    fed = Fed()
    assert not fed.follower.feed([0x90, 60, 100], T0)
    assert not fed.follower.feed([], T0)


def test_a_lost_tick_does_not_shift_the_beat():
    """A tick dropped on the way (a MIDI layer under load) must not move later beats by 1/24."""
    fed = Fed(tempo=120)
    fed.follower.feed([START], T0)
    spacing = 0.5 / 24
    for i in range(96):
        if i in (40, 70, 71):  # one tick lost, later two in a row
            continue
        fed.follower.feed([CLOCK], T0 + i * spacing)
    assert fed.follower.lost_ticks == 3
    assert fed.clock.tempo == pytest.approx(120.0, rel=1e-6)
    assert fed.clock.time_at(5.0) == pytest.approx(T0 + 2.5, abs=1e-6)


def test_a_sudden_halving_of_the_tempo_is_not_taken_for_lost_ticks():
    fed = Fed(tempo=120)
    fed.follower.feed([START], T0)
    t = fed.ticks(48, 120.0, T0)
    spacing = 60 / (60 * 24)  # 60 BPM: every interval is two of the old ones
    for i in range(12):
        fed.follower.feed([CLOCK], t + i * spacing)
    assert fed.follower.lost_ticks == 0
    assert fed.clock.tempo == pytest.approx(60.0, rel=1e-6)
    assert fed.clock.time_at((48 + 11) / 24) == pytest.approx(t + 11 * spacing, abs=1e-6)


def test_ticks_lost_right_after_start_are_recovered():
    """Start comes with beat 0's tick; when the first two ticks never arrive, the first tick
    heard is beat 2/24, not beat 0."""
    fed = Fed(tempo=100)
    spacing = 0.5 / 24  # 120 BPM
    fed.follower.feed([START], T0)
    for i in range(2, 60):
        fed.follower.feed([CLOCK], T0 + i * spacing)
    assert fed.follower.lost_ticks == 2
    assert fed.clock.tempo == pytest.approx(120.0, rel=1e-6)
    assert fed.clock.time_at(4.0) == pytest.approx(T0 + 2.0, abs=1e-6)


def test_a_first_tick_half_an_interval_after_start_is_beat_zero():
    """Not a whole number of intervals after Start: nothing was lost."""
    fed = Fed(tempo=100)
    spacing = 0.5 / 24
    fed.follower.feed([START], T0 - 0.5 * spacing)
    for i in range(60):
        fed.follower.feed([CLOCK], T0 + i * spacing)
    assert fed.follower.lost_ticks == 0
    assert fed.clock.time_at(4.0) == pytest.approx(T0 + 2.0, abs=1e-6)


def test_with_arrival_times_a_stall_is_not_taken_for_lost_ticks():
    """Arrival-timed ticks (python-rtmidi): the host's timeline stalled for three tick
    intervals (a JACK xrun: the frames, and the ticks written at them, fell behind). Every
    tick still came, so the tick after the gap is the next beat position, and the line
    restarts from the ticks after the gap. (The same ticks on exact times would be three
    lost ticks: see test_a_lost_tick_does_not_shift_the_beat.)"""
    clock = Clock(tempo=100.0, now=lambda: T0)
    follower = MidiClockFollower(clock, exact_times=False)
    spacing = 0.5 / 24  # 120 BPM
    stall = 3 * spacing
    follower.feed([START], T0)
    for i in range(96):
        follower.feed([CLOCK], T0 + i * spacing + (stall if i >= 48 else 0.0))
    assert follower.lost_ticks == 0
    assert clock.tempo == pytest.approx(120.0, rel=1e-6)
    # Beat 3 is tick 72, which came `stall` late: the beat follows the host, not the wall clock.
    assert clock.time_at(3.0) == pytest.approx(T0 + 72 * spacing + stall, abs=1e-6)
    exact = Fed(tempo=100)  # the same times taken as exact: tick 48 is read as tick 51
    exact.follower.feed([START], T0)
    for i in range(96):
        exact.follower.feed([CLOCK], T0 + i * spacing + (stall if i >= 48 else 0.0))
    assert exact.follower.lost_ticks == 3


@pytest.mark.parametrize("lost", [0, 1, 2])
def test_start_a_period_before_beat_zero_with_ticks_lost_after_it(lost):
    """jack_midi_clock writes Start one JACK period before beat 0's tick. With that period
    as the follower's start slack, the first tick heard is still placed right whether or
    not the ticks after Start were lost; without it, a lost tick 0 would go unnoticed."""
    period = 256 / 48000
    spacing = 60 / (180 * 24)  # 180 BPM: Start lies 0.38 of an interval before beat 0
    clock = Clock(tempo=100.0, now=lambda: T0)
    follower = MidiClockFollower(clock, start_slack=period)
    follower.feed([START], T0 - period)
    for i in range(lost, 72):
        follower.feed([CLOCK], T0 + i * spacing)
    assert follower.lost_ticks == lost
    assert clock.time_at(2.0) == pytest.approx(T0 + 48 * spacing, abs=1e-6)
    if lost:
        blind = MidiClockFollower(Clock(tempo=100.0, now=lambda: T0))  # no slack: Start "with" beat 0
        blind.feed([START], T0 - period)
        for i in range(lost, 72):
            blind.feed([CLOCK], T0 + i * spacing)
        assert blind.lost_ticks == 0
