"""Training data readers (training/sources) and lenient MIDI reading, on real files.

The music comes from Debian packages (openttd-openmsx, simutrans-data, freedm); a missing
one fails the test with the package to install. pypianoroll (a test-only dependency)
writes the LPD files that our numpy-only reader reads back.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import mido
import numpy as np
import pytest

from backline.models.errors import BacklineError
from backline.models.midi import MidiError, read_midi, read_midi_bytes
from backline.training.sources import (
    LpdError,
    PieceSource,
    SourceError,
    WadError,
    describe_formats,
    find_pieces,
    read_lpd,
    read_wad_music,
)
from .debian_music import freedm, openmsx, simutrans

FREEDM_MIDI_LUMPS = 35
# The two simutrans-data songs with key signatures mido cannot decode (sf -1, mode 255).
BAD_KEY_SONGS = ("05-Boring-afternoon.mid", "30-On-the-waterfront.mid")










def _one_line_error(excinfo: pytest.ExceptionInfo, cls: type) -> str:
    error = excinfo.value
    assert isinstance(error, cls) and isinstance(error, BacklineError)
    assert isinstance(error, ValueError)
    message = str(error)
    assert message and "\n" not in message
    return message


def _wad(lumps: list[tuple[str, bytes]], magic: bytes = b"PWAD") -> bytes:
    """A WAD file: header, the lumps' data, then the directory."""
    body = b"".join(data for _, data in lumps)
    directory = b""
    offset = 12
    for name, data in lumps:
        directory += struct.pack("<ii8s", offset if data else 0, len(data), name.encode())
        offset += len(data)
    return struct.pack("<4sii", magic, len(lumps), 12 + len(body)) + body + directory


def _notes_count(score) -> int:
    return sum(len(t.notes) for t in score.tracks)


# --------------------------------------------------------------------------- WAD


def test_freedm_music_lumps_are_midi_files(capsys):
    music, skipped = read_wad_music(freedm())
    assert len(music) == FREEDM_MIDI_LUMPS and skipped == []
    names = [name for name, _ in music]
    assert all(name.startswith("D_") for name in names) and "D_RUNNIN" in names
    assert len(set(names)) == len(names)
    for name, data in music:
        assert data.startswith(b"MThd")
        score = read_midi_bytes(data, name)  # strictly valid, all of them
        assert _notes_count(score) > 0 and score.length_beats > 0
    assert capsys.readouterr() == ("", "")


def test_wad_keeps_order_duplicates_and_reports_mus_lumps(tmp_path):
    music, _ = read_wad_music(freedm())
    runnin = dict(music)["D_RUNNIN"]
    path = tmp_path / "mix.wad"
    path.write_bytes(_wad([
        ("MAP01", b""),  # a marker lump: size 0
        ("D_RUNNIN", runnin),
        ("D_E1M1", b"MUS\x1a" + bytes(60)),
        ("PLAYPAL", bytes(768)),
        ("D_COPY", runnin),
        ("D_EMPTY", b""),
    ]))
    music, skipped = read_wad_music(path)
    assert music == [("D_RUNNIN", runnin), ("D_COPY", runnin)]
    assert [name for name, _ in skipped] == ["D_E1M1", "D_EMPTY"]
    assert "MUS" in skipped[0][1] and "not supported" in skipped[0][1]


def test_corrupt_wads_raise_one_line_wad_errors(tmp_path):
    real = freedm().read_bytes()
    small = _wad([("D_RUNNIN", dict(read_wad_music(freedm())[0])["D_RUNNIN"])])
    dir_offset = struct.unpack_from("<i", small, 8)[0]
    cases = {
        # The directory sits at the end of freedm.wad, so half the file has lost it.
        "truncated.wad": (real[: len(real) // 2], "outside"),
        "header.wad": (real[:8], "truncated"),
        "magic.wad": (b"JUNK" + small[4:], "not a Doom WAD"),
        "dir.wad": (small[:8] + struct.pack("<i", len(small) + 100) + small[12:], "outside"),
        "count.wad": (small[:4] + struct.pack("<i", -1) + small[8:], "outside"),
        "lump.wad": (small[:dir_offset] + struct.pack("<ii", 12, len(small))
                     + small[dir_offset + 8:], "D_RUNNIN"),
        "negative.wad": (small[:dir_offset] + struct.pack("<ii", 12, -5)
                         + small[dir_offset + 8:], "-5 bytes"),
    }
    assert read_wad_music_ok(tmp_path / "ok.wad", small)
    for name, (data, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(WadError) as excinfo:
            read_wad_music(path)
        message = _one_line_error(excinfo, WadError)
        assert str(path) in message and expected in message, message
    with pytest.raises(WadError, match="could not be read"):
        read_wad_music(tmp_path)  # a folder


def read_wad_music_ok(path: Path, data: bytes) -> bool:
    path.write_bytes(data)
    music, skipped = read_wad_music(path)
    return [name for name, _ in music] == ["D_RUNNIN"] and skipped == []


# --------------------------------------------------------------------------- lenient MIDI


@pytest.mark.parametrize("song", BAD_KEY_SONGS)
def test_invalid_key_signatures_read_only_leniently(song):
    path = simutrans(song)
    with pytest.raises(MidiError, match="damaged MIDI file"):  # strict reading refuses it, in one line
        read_midi(path)
    score = read_midi(path, lenient=True)
    assert len(score.tracks) > 3 and _notes_count(score) > 1000
    # The repair only retypes the bad events (FF 59 02 FF FF -> FF 7F 02 FF FF), so the
    # score equals a strict read of bytes patched that way by hand.
    data = path.read_bytes()
    assert data.count(b"\xff\x59\x02\xff\xff") == 9
    patched = data.replace(b"\xff\x59\x02\xff\xff", b"\xff\x7f\x02\xff\xff")
    assert read_midi_bytes(patched, song) == score
    assert read_midi_bytes(data, song, lenient=True) == score


def test_lenient_reading_changes_nothing_for_valid_files():
    for path in (openmsx("coconut_run2.mid"), openmsx("ttsong_iii_imuh3.mid"),
                 simutrans("01-Simutrans-Main-Theme.mid")):
        assert read_midi(path, lenient=True) == read_midi(path)


def test_lenient_reading_accepts_a_truncated_last_track():
    data = openmsx("coconut_run2.mid").read_bytes()
    full = read_midi_bytes(data, "full")
    n_tracks = len(mido.MidiFile(file=io.BytesIO(data)).tracks)
    last_track = data.rindex(b"MTrk")
    for cut in (len(data) - 1, len(data) - 200):
        assert cut > last_track + 8
        with pytest.raises(MidiError, match="truncated"):
            read_midi_bytes(data[:cut], "cut")
        score = read_midi_bytes(data[:cut], "cut", lenient=True)
        assert 0 < _notes_count(score) <= _notes_count(full)
        assert score.tracks[:-1] == full.tracks[:-1]  # the other tracks are intact
    assert n_tracks > 2
    # Cut inside an earlier track, whole parts are gone: still an error.
    with pytest.raises(MidiError, match="truncated"):
        read_midi_bytes(data[: last_track - 10], "cut", lenient=True)


def test_lenient_reading_clips_data_bytes_above_127(tmp_path):
    midi = mido.MidiFile(type=0, ticks_per_beat=96)
    midi.tracks.append(mido.MidiTrack([
        mido.Message("note_on", note=60, velocity=99, time=0),
        mido.Message("note_off", note=60, time=96),
    ]))
    buffer = io.BytesIO()
    midi.save(file=buffer)
    data = buffer.getvalue().replace(b"\x90\x3c\x63", b"\x90\x3c\xc8")  # velocity 200
    with pytest.raises(MidiError, match="data byte"):
        read_midi_bytes(data, "clip")
    score = read_midi_bytes(data, "clip", lenient=True)
    assert [(n.pitch, n.velocity) for n in score.tracks[0].notes] == [(60, 127)]


def test_time_signatures_lists_every_change_in_time_order(tmp_path):
    midi = mido.MidiFile(type=1, ticks_per_beat=480)
    midi.tracks.append(mido.MidiTrack([
        mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0),
        mido.MetaMessage("time_signature", numerator=6, denominator=8, time=480 * 6),
        mido.MetaMessage("time_signature", numerator=3, denominator=4, time=480 * 6),
    ]))
    midi.tracks.append(mido.MidiTrack([
        mido.MetaMessage("time_signature", numerator=5, denominator=4, time=480 * 9),
        mido.Message("note_on", note=64, velocity=80, time=0),
        mido.Message("note_off", note=64, time=480),
    ]))
    path = tmp_path / "meters.mid"
    midi.save(path)
    score = read_midi(path)
    assert score.time_signatures == [(0.0, 3, 4), (6.0, 6, 8), (9.0, 5, 4), (12.0, 3, 4)]
    assert score.time_signature == (3, 4)
    # A real file with a change: 4/4, a 2/4 bar at beat 96, 4/4 again.
    real = read_midi(openmsx("ttsong_iii_imuh3.mid"))
    assert real.time_signatures == [(0.0, 4, 4), (96.0, 2, 4), (98.0, 4, 4)]


# --------------------------------------------------------------------------- LPD


@pytest.mark.parametrize("song", ["coconut_run2.mid", "ttsong_iii_imuh3.mid"])
def test_lpd_files_written_by_pypianoroll_match_the_midi(tmp_path, song):
    try:
        import pypianoroll
    except ImportError:
        pytest.fail("pypianoroll is missing; pip install pypianoroll==1.0.4 (test-only)",
                    pytrace=False)
    path = openmsx(song)
    multitrack = pypianoroll.read(str(path))
    npz = tmp_path / "piece.npz"
    multitrack.save(str(npz))
    score = read_lpd(npz)
    midi = read_midi(path)
    step = 1 / multitrack.resolution
    assert score.ticks_per_beat == multitrack.resolution
    assert score.tempo_bpm == pytest.approx(midi.tempo_bpm, abs=0.01)
    assert [t.name for t in score.tracks] == [t.name for t in midi.tracks]
    for ours, theirs in zip(score.tracks, midi.tracks):
        assert (ours.program, ours.is_drum) == (theirs.program, theirs.is_drum)
        assert len(ours.notes) == len(theirs.notes), ours.name
        for a, b in zip(ours.notes, sorted(theirs.notes, key=lambda n: (n.start, n.pitch))):
            assert a.pitch == b.pitch and abs(a.start - b.start) <= step, (ours.name, a, b)
        same_velocity = sum(a.velocity == b.velocity for a, b in zip(ours.notes, theirs.notes))
        assert same_velocity >= 0.9 * len(ours.notes)
    # Uncompressed files read the same.
    multitrack.save(str(tmp_path / "plain.npz"), compressed=False)
    assert read_lpd(tmp_path / "plain.npz") == score


def _csc(roll: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """scipy.sparse.csc_matrix's parts, without scipy."""
    indices, data, indptr = [], [], [0]
    for column in roll.T:
        rows = np.flatnonzero(column)
        indices.extend(rows)
        data.extend(column[rows])
        indptr.append(len(indices))
    return {f"{name}_csc_data": np.array(data, dtype=roll.dtype),
            f"{name}_csc_indices": np.array(indices, dtype=np.int32),
            f"{name}_csc_indptr": np.array(indptr, dtype=np.int32),
            f"{name}_csc_shape": np.array(roll.shape)}


def _old_lpd(path: Path, info: dict | None = None, **arrays) -> Path:
    """An LPD file as pypianoroll 0.x wrote it: beat_resolution, bool rolls."""
    np.savez_compressed(path, **arrays)
    with zipfile.ZipFile(path, "a") as archive:
        if info is not None:
            archive.writestr("info.json", json.dumps(info))
    return path


def test_old_lpd_format(tmp_path):
    resolution = 4
    piano = np.zeros((48, 128), bool)
    piano[0:4, 60] = True  # beat 0, one beat
    piano[4:6, 60] = True  # a second run right after: still one note (runs join)
    piano[8:10, 64] = True
    piano[11:12, 64] = True  # a gap of one step: a new note
    drums = np.zeros((48, 128), bool)
    drums[[0, 12, 24], 36] = True
    downbeat = np.zeros(48, bool)
    downbeat[[0, 12, 24, 36]] = True  # 3-beat bars
    info = {"beat_resolution": resolution, "name": "old",
            "0": {"program": 0, "is_drum": False, "name": "Piano"},
            "1": {"program": 0, "is_drum": True, "name": "Drums"},
            "2": {"program": 33, "is_drum": False, "name": "Bass"}}
    path = _old_lpd(tmp_path / "old.npz", info, tempo=np.full(48, 96.0), downbeat=downbeat,
                    **_csc(piano, "pianoroll_0"), **_csc(drums, "pianoroll_1"),
                    **_csc(np.zeros((48, 128), bool), "pianoroll_2"))
    score = read_lpd(path)
    assert [t.name for t in score.tracks] == ["Piano", "Drums"]  # Bass has no notes
    piano_track, drum_track = score.tracks
    assert [(n.pitch, n.start, n.duration, n.velocity) for n in piano_track.notes] == [
        (60, 0.0, 1.5, 100), (64, 2.0, 0.5, 100), (64, 2.75, 0.25, 100)]
    assert drum_track.is_drum and drum_track.channel == 9 and piano_track.channel == 0
    assert [n.start for n in drum_track.notes] == [0.0, 3.0, 6.0]
    assert score.tempo_bpm == 96.0 and score.tempo_changes == [(0.0, 96.0)]
    assert score.time_signature == (3, 4) and score.time_signatures == [(0.0, 3, 4)]
    assert score.ticks_per_beat == resolution

    # Velocity rolls: the first step's value, clipped to 1..127; no tempo -> 120, 4/4.
    roll = np.zeros((8, 128), np.int16)
    roll[0:2, 50] = [300, 20]
    roll[4:6, 52] = -4
    path = _old_lpd(tmp_path / "velocity.npz", {"beat_resolution": 2, "0": {}},
                    **_csc(roll, "pianoroll_0"))
    score = read_lpd(path)
    assert [(n.pitch, n.start, n.duration, n.velocity) for n in score.tracks[0].notes] == [
        (50, 0.0, 1.0, 127), (52, 2.0, 1.0, 1)]
    assert (score.tempo_bpm, score.time_signature, score.time_signatures) == (120.0, (4, 4), [])
    assert score.tracks[0].name == "Track 1"


def test_bad_lpd_files_raise_one_line_lpd_errors(tmp_path):
    roll = np.zeros((8, 128), bool)
    roll[0, 60] = True
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with open(tmp_path / "array.npz", "wb") as handle:  # np.save's .npy format inside
        np.save(handle, roll)
    cases = {
        "junk.npz": "not an .npz (zip) file",
        "array.npz": "not an .npz (zip) file",
        "noinfo.npz": "no info.json",
        "nores.npz": "resolution",
        "notracks.npz": "no tracks",
        "noroll.npz": "no piano roll",
        "empty.npz": "no notes",
        "broken.npz": "inconsistent",
    }
    _old_lpd(tmp_path / "noinfo.npz", None, **_csc(roll, "pianoroll_0"))
    _old_lpd(tmp_path / "nores.npz", {"0": {}}, **_csc(roll, "pianoroll_0"))
    _old_lpd(tmp_path / "notracks.npz", {"resolution": 4}, **_csc(roll, "pianoroll_0"))
    _old_lpd(tmp_path / "noroll.npz", {"resolution": 4, "0": {}}, tempo=np.ones(3))
    _old_lpd(tmp_path / "empty.npz", {"resolution": 4, "0": {}},
             **_csc(np.zeros((8, 128), bool), "pianoroll_0"))
    broken = _csc(roll, "pianoroll_0")
    broken["pianoroll_0_csc_indices"] = np.array([99], np.int32)  # row 99 of 8
    _old_lpd(tmp_path / "broken.npz", {"resolution": 4, "0": {}}, **broken)
    for name, expected in cases.items():
        with pytest.raises(LpdError) as excinfo:
            read_lpd(tmp_path / name)
        message = _one_line_error(excinfo, LpdError)
        assert name in message and expected in message, message


# --------------------------------------------------------------------------- discovery


def test_find_pieces_in_a_mixed_folder(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / ".hidden").mkdir()
    shutil.copy(openmsx("coconut_run2.mid"), data / "b.mid")
    shutil.copy(simutrans(BAD_KEY_SONGS[0]), data / "sub" / "Key.MIDI")
    shutil.copy(openmsx("wood_whistles.mid"), data / ".hidden" / "x.mid")
    shutil.copy(openmsx("wood_whistles.mid"), data / ".skipped.mid")
    (data / "freedm.wad").symlink_to(freedm())
    (data / "zz-broken.wad").write_bytes(freedm().read_bytes()[:4096])
    (data / "notes.txt").write_text("not music")
    roll = np.zeros((8, 128), bool)
    roll[0:4, 60] = True
    _old_lpd(data / "a.npz", {"beat_resolution": 4, "0": {"name": "Piano"}},
             **_csc(roll, "pianoroll_0"))

    pieces = list(find_pieces(data))
    assert all(isinstance(p, PieceSource) for p in pieces)
    names = [p.name for p in pieces]
    lumps = [name for name, _ in read_wad_music(freedm())[0]]
    assert names == (["a.npz", "b.mid"] + [f"freedm.wad:{lump}" for lump in lumps]
                     + ["sub/Key.MIDI", "zz-broken.wad"])
    assert len(pieces) == 2 + FREEDM_MIDI_LUMPS + 2
    assert names == [p.name for p in find_pieces(str(data))]  # deterministic

    by_name = {p.name: p for p in pieces}
    assert by_name["a.npz"].load().tracks[0].notes[0].pitch == 60
    assert _notes_count(by_name["b.mid"].load()) > 0
    assert _notes_count(by_name["sub/Key.MIDI"].load()) > 1000  # read leniently
    assert _notes_count(by_name["freedm.wad:D_RUNNIN"].load()) > 0
    with pytest.raises(WadError) as excinfo:  # reported by load, not by find_pieces
        by_name["zz-broken.wad"].load()
    _one_line_error(excinfo, WadError)


def test_find_pieces_for_single_files(tmp_path):
    assert [p.name for p in find_pieces(freedm())] == [
        f"freedm.wad:{name}" for name, _ in read_wad_music(freedm())[0]]
    song = openmsx("coconut_run2.mid")
    (piece,) = find_pieces(song)
    assert piece.name == "coconut_run2.mid" and piece.load() == read_midi(song)
    upper = tmp_path / "SONG.KAR"
    shutil.copy(song, upper)
    assert [p.name for p in find_pieces(upper)] == ["SONG.KAR"]


def test_find_pieces_reports_a_wad_without_midi_music(tmp_path):
    path = tmp_path / "maps.wad"
    path.write_bytes(_wad([("MAP01", b""), ("THINGS", bytes(20)), ("D_E1M1", b"MUS\x1a")]))
    pieces = list(find_pieces(path))
    assert [p.name for p in pieces] == ["maps.wad:D_E1M1"]
    with pytest.raises(SourceError, match="MUS"):
        pieces[0].load()
    path.write_bytes(_wad([("MAP01", b"")]))
    (piece,) = find_pieces(path)
    with pytest.raises(SourceError, match="no music"):
        piece.load()


def test_find_pieces_without_anything_usable(tmp_path):
    (tmp_path / "notes.txt").write_text("not music")
    (tmp_path / ".hidden.mid").write_bytes(b"MThd")
    (tmp_path / "empty").mkdir()
    for path, expected in [(tmp_path, "holds no"), (tmp_path / "empty", "holds no"),
                           (tmp_path / "missing", "does not exist"),
                           (tmp_path / "notes.txt", "is not one of")]:
        with pytest.raises(SourceError) as excinfo:
            find_pieces(path)
        message = _one_line_error(excinfo, SourceError)
        assert expected in message and ".wad" in message and ".npz" in message
    assert ".mid" in describe_formats() and "\n" not in describe_formats()
