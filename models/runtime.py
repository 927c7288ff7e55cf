"""Run an exported generator with ONNX Runtime, and turn its probabilities into rolls.

Where it runs: models/providers.py (devices, providers, session options); how a call
reaches the session: models/session.py (I/O binding, CUDA graphs); fallbacks and the fp16
check: models/execution.py. The provider in use is logged once, and a CPU-only machine
sees no error output from ONNX Runtime's own attempt to load CUDA.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import execution
from .errors import BacklineError
from .providers import CPU, Device, choose_providers, open_session
from .spec import METADATA_KEY, GeneratorSpec, SpecError

log = logging.getLogger("backline.models")

__all__ = ["Generator", "ModelLoadError", "Probabilities", "binarise", "choose_providers"]


class ModelLoadError(BacklineError, RuntimeError):
    """A model file is missing, unreadable, or not a Backline generator."""


MONOPHONIC_TOP_K = 3


@dataclass
class Probabilities:
    """Generator output for a batch: `[batch, n_tracks, time, n_pitches]` each."""

    frames: np.ndarray
    onsets: np.ndarray


class Generator:
    """An exported accompaniment generator: its spec plus an ONNX Runtime session.

    `run` may be called from several threads: a lock per generator serialises the calls,
    since each reuses the same bound buffers."""

    def __init__(self, path: str | os.PathLike, device: "str | Device" = "auto", *,
                 announce: bool = True, verify: bool = True) -> None:
        """Load `path` on `device` (KIND[:PRECISION], see models/providers.py); `announce`
        logs the provider in use; `verify` measures fp16 / TensorRT against fp32 on the
        CPU and refuses them if the notes change (models/precision.py)."""
        self.path = Path(path)
        self.device = Device.parse(device)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise ModelLoadError(
                f"model file {self.path} does not exist; run 'backline models' to list "
                "the installed models"
            ) from None
        except OSError as exc:
            raise ModelLoadError(f"cannot read model file {self.path}: {exc.strerror}") from None
        try:
            # The fp32 CPU session comes first on every device: it holds the metadata, and
            # it is the reference that fp16 and TensorRT are checked against.
            reference = open_session(data, [CPU])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"{self.path} is not a loadable ONNX model ({first_line[:160]}); "
                "re-export it with 'backline export' or reinstall Backline"
            ) from None
        meta = reference.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ModelLoadError(
                f"{self.path} is an ONNX model but not a Backline generator (no "
                f"'{METADATA_KEY}' metadata); export it with 'backline export'"
            )
        try:
            self.spec = GeneratorSpec.from_json(meta[METADATA_KEY])
        except SpecError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from None
        self._check_signature(reference)
        self._lock = threading.Lock()
        try:
            self._execution = execution.start(data, reference, self.spec, self.device, verify=verify)
        except BacklineError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from None
        self.session = self._execution.session
        if self._execution.runner.device != "cpu":
            self.warm_up()
        if announce:
            log.info("model %s runs on %s", self.spec.name, self.provider)

    @property
    def provider(self) -> str:
        """What runs the model, as users see it: the execution provider, plus on a GPU
        what runs on it, e.g. 'CUDAExecutionProvider (I/O binding, CUDA graphs)'."""
        return self._execution.label

    @property
    def execution_provider(self) -> str:
        """ONNX Runtime's name of the provider, e.g. 'CPUExecutionProvider'."""
        return self._execution.provider

    def _check_signature(self, session) -> None:
        spec = self.spec
        inputs = {i.name: i.shape for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        expected_melody = [spec.bars, spec.steps_per_bar, spec.n_pitches]
        if "melody" not in inputs or "z" not in inputs or list(inputs["melody"][1:]) != expected_melody:
            raise ModelLoadError(
                f"{self.path}: its inputs {inputs} do not match its metadata "
                f"(melody [batch, {', '.join(map(str, expected_melody))}], z); re-export it"
            )
        if outputs[:2] != ["accompaniment", "onsets"]:
            raise ModelLoadError(f"{self.path}: outputs {outputs} are not accompaniment, onsets")

    def draw_z(self, seed: int, batch: int) -> np.ndarray:
        """Noise for `batch` windows; the same seed gives the same noise."""
        rng = np.random.default_rng(seed)
        return rng.standard_normal((batch, self.spec.z_dim)).astype(np.float32)

    def run(self, melody: np.ndarray, z: np.ndarray) -> Probabilities:
        """melody: `[batch, window_steps, n_pitches]` 0/1. Returns probabilities with the
        bar axis folded back into time: `[batch, n_tracks, window_steps, n_pitches]`.
        The arrays are the caller's own: a later call does not overwrite them."""
        spec = self.spec
        batch = melody.shape[0]
        shaped = melody.astype(np.float32, copy=False).reshape(
            batch, spec.bars, spec.steps_per_bar, spec.n_pitches
        )
        with self._lock:
            frames, onsets = self._execution.run({"melody": shaped, "z": z.astype(np.float32, copy=False)})
        shape = (batch, spec.n_tracks, spec.window_steps, spec.n_pitches)
        return Probabilities(frames.reshape(shape), onsets.reshape(shape))

    def warm_up(self, batches: tuple[int, ...] = (1,)) -> None:
        """Run silence once per batch size, so the first real call does not pay for
        buffer allocation, cuDNN's algorithm search or CUDA graph capture."""
        for batch in batches:
            silence = np.zeros((batch, self.spec.window_steps, self.spec.n_pitches), dtype=np.float32)
            self.run(silence, self.draw_z(0, batch))


def binarise(
    frames: np.ndarray,
    onsets: np.ndarray,
    spec: GeneratorSpec,
    *,
    threshold: float | None = None,
    sample_seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities `[n_tracks, time, n_pitches]` -> boolean frames and onsets.

    By threshold, or by Bernoulli sampling seeded with `sample_seed`. Each track uses its
    own thresholds where the model calibrated them per track (`TrackSpec.threshold` ...),
    else the model's; a `threshold` given here overrides every track's note threshold. A
    polyphonic track keeps every cell that passes (held through dips down to its hold
    threshold, `held_cells`). A monophonic track is read note by note (`_read_voices`).
    """
    rng = np.random.default_rng(sample_seed) if sample_seed is not None else None
    levels = [track_thresholds(spec, track, threshold) for track in spec.tracks]
    if any(t.rest_threshold is not None for t in spec.tracks):
        frames = rest_bars(frames, spec)
    out_frames = np.zeros(frames.shape, dtype=bool)
    out_onsets = np.zeros(frames.shape, dtype=bool)
    voices = [k for k, track in enumerate(spec.tracks) if track.monophonic]
    if rng is None and voices:  # every voice in one pass, each with its own thresholds
        _read_voices(frames[voices], onsets[voices], np.array([[levels[k][0]] for k in voices]),
                     np.array([[levels[k][1]] for k in voices]), voices, out_frames, out_onsets)
    for k, track in enumerate(spec.tracks):
        note, onset, hold = levels[k]
        if not track.monophonic:
            if rng is None:
                out_frames[k] = held_cells(frames[k], note, hold)
                out_onsets[k] = out_frames[k] & (onsets[k] >= onset)
            else:
                out_frames[k] = rng.random(frames[k].shape) < frames[k]
                out_onsets[k] = out_frames[k] & (rng.random(onsets[k].shape) < onsets[k])
        elif rng is not None:  # voice by voice, so that a seed draws in the same order
            _read_voices(frames[k:k + 1], onsets[k:k + 1], note, onset, [k], out_frames, out_onsets, rng)
    return out_frames, out_onsets


def rest_bars(frames: np.ndarray, spec: GeneratorSpec) -> np.ndarray:
    """Frame probabilities `[K, T, P]` (T from a barline) with each track's rest bars
    zeroed: bars where no cell reaches the track's `rest_threshold`. A band member sits
    out a bar the model barely wants them in, as often as they sat out in the data,
    instead of playing its faintest guess."""
    out = frames.copy()
    bar = spec.steps_per_bar
    n_steps = frames.shape[1]
    for k, track in enumerate(spec.tracks):
        if track.rest_threshold is None:
            continue
        for start in range(0, n_steps, bar):
            if frames[k, start:start + bar].max(initial=0.0) < track.rest_threshold:
                out[k, start:start + bar] = 0.0
    return out


def track_thresholds(spec: GeneratorSpec, track, threshold: float | None = None
                     ) -> tuple[float, float, float | None]:
    """(note, onset, hold) thresholds of one track: its own, else the model's; `threshold`
    (a user's choice) overrides the note threshold, and then the hold scales with it."""
    note = track.threshold if track.threshold is not None else spec.threshold
    onset = track.onset_threshold if track.onset_threshold is not None else spec.onset_threshold
    hold = track.hold_threshold if track.threshold is not None else spec.hold_threshold
    if threshold is not None:
        hold = None if hold is None else hold * threshold / note
        note = threshold
    return note, onset, hold


def held_cells(p: np.ndarray, threshold: float, hold: float | None) -> np.ndarray:
    """Cells `[T, P]` that sound: where p >= threshold, and (with `hold`) onward from
    there while p stays >= hold. The hold keeps a note whole through a dip in the model's
    confidence, the fragmentation a single threshold turns into a stutter of short notes;
    a repeated note still needs its onset to restrike (read from the onset map)."""
    start = p >= threshold
    if hold is None or hold >= threshold:
        return start
    sustain = p >= hold  # start implies sustain
    n_steps = p.shape[0]
    steps = np.arange(n_steps)[:, None]
    # Per cell: where its run of sustain began, and the last start at or before it.
    run_start = np.maximum.accumulate(np.where(~sustain, steps + 1, 0), axis=0)
    last_start = np.maximum.accumulate(np.where(start, steps, -1), axis=0)
    return sustain & (last_start >= run_start)


def _read_voices(p, q, threshold, onset_threshold, rows, out_frames, out_onsets, rng=None) -> None:
    """Read voices `[V, T, P]` note by note, writing voice v into out_frames[rows[v]] and
    out_onsets[rows[v]] (`[T, P]` each).

    A voice sounds where its `MONOPHONIC_TOP_K` likeliest pitches together pass the test:
    a model unsure between two neighbouring notes still plays one, while the faint mass
    spread over every other pitch cannot add up to a note. A note starts where the voice
    starts sounding or where an onset passes (the likeliest pitch's onset); it lasts until
    the next start, and its pitch is the one most probable over its whole length (sampled
    from those probabilities, one draw per note in order, when `rng` is given). Choosing
    the pitch per note, not per step, is what keeps a wavering model from breaking a
    quarter note into flickering fragments.
    """
    n_voices, n_steps, n_pitches = p.shape
    top = np.clip(np.sort(p, axis=-1)[..., -MONOPHONIC_TOP_K:].sum(axis=-1), 0.0, 1.0)
    loudest_onset = q.max(axis=-1)
    if rng is None:
        sounding, onset_here = top >= threshold, loudest_onset >= onset_threshold
    else:
        sounding = rng.random(top.shape) < top
        onset_here = rng.random(loudest_onset.shape) < loudest_onset
    previous = np.zeros_like(sounding)
    previous[:, 1:] = sounding[:, :-1]
    # Voice-major rows with a silent step appended: a note never runs into the next voice.
    is_start = np.zeros((n_voices, n_steps + 1), dtype=bool)
    is_start[:, :n_steps] = sounding & (~previous | onset_here)
    starts = np.flatnonzero(is_start)
    if len(starts) == 0:
        return
    # Each note ends at the first step after its start that is silent or starts the next note.
    boundary = np.ones((n_voices, n_steps + 1), dtype=bool)
    boundary[:, :n_steps] = ~sounding
    boundary |= is_start
    stops = np.flatnonzero(boundary)
    ends = stops[np.searchsorted(stops, starts, side="right")]
    # Each note's probability mass per pitch, summed over its steps (the appended silent
    # rows make every end a valid segment boundary for reduceat).
    padded = np.zeros((n_voices, n_steps + 1, n_pitches), dtype=p.dtype)
    padded[:, :n_steps] = p
    bounds = np.stack([starts, ends], axis=1).ravel()
    weights = np.add.reduceat(padded.reshape(-1, n_pitches), bounds, axis=0)[::2]
    if rng is None:
        pitches = weights.argmax(axis=1)
    else:
        pitches = np.array([rng.choice(len(w), p=w / w.sum()) for w in weights], dtype=int)
    voice, start = np.divmod(starts, n_steps + 1)
    lengths = ends - starts
    # Every step of every note, as (row, step, pitch) index arrays.
    steps = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(start, lengths)
    track = np.asarray(rows)[voice]
    out_frames[np.repeat(track, lengths), steps, np.repeat(pitches, lengths)] = True
    out_onsets[track, start, pitches] = True
