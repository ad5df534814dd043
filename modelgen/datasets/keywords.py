"""Spoken keywords made offline: the Speech Commands 12-class task from two speech engines.

Classes: the ten Speech Commands words, `_unknown_` (other words of the same voices: the
dataset's auxiliary words and the digits, never a keyword) and `_silence_` (no speech:
near-digital silence, room tone, white/pink/brown noise and mains hum at levels from
−70 to −20 dBFS), each `per_word` clips, as Speech Commands' 12-class setup gives silence
and unknown about one keyword's share each.

Speech comes from espeak-ng (its own English voices with a voice variant, speed, pitch and
amplitude) and Festival (`text2wave` with the Debian voices kal_diphone, ked_diphone and
cmu_us_slt_arctic_hts, with a duration stretch), then a random tape-speed factor
(0.9–1.1: tempo and pitch together); trimmed, resampled to the target rate, placed at a
random time in a 1 s clip, set to a random level and mixed with synthetic background noise
at a random SNR.

Voices held out whole, each its own corpus in the same layout (`modelgen eval --data`):
    OUT/                  training voices: espeak-ng's but every VOICE_HOLDOUT-th one, and
                          Festival's diphone voices (kal, ked)
    OUT-unseen-voices/    those espeak-ng voices: unseen voices of a seen engine
    OUT-unseen-engine/    Festival's HTS voice (cmu_us_slt_arctic_hts): a synthesis engine
                          the model never heard
so no clip of a held-out voice can reach the training, validation or test split. The
engines are synthesis methods: espeak-ng's formant synthesis, Festival's diphone
concatenation and the HTS engine's statistical parametric synthesis (Festival drives both
of the last two). The corpus keeps to these two programs so that a dataset made from the
project's setup is the same on every machine; holding out all of Festival would leave
training one engine, and a model that knows one engine does not hear another (fused 39 %
on Festival with espeak-ng alone, bench/README.md).

Determinism: sample i of a word draws everything from a generator seeded by
(seed, crc32(word), i), so it is the same whatever per_word, the word list or the number
of workers, and the files are byte-identical for the same seed on the same espeak-ng
version (its voice list is part of the draw and is recorded in keywords.json).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
import time
import wave
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edvit.media import resample
from modelgen.datasets.room import (
    NO_ROOM,
    RoomSpec,
    band_limit,
    draw_room,
    impulse_response,
    reverberate,
)

KEYWORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
AUXILIARY: tuple[str, ...] = (
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip
"""Speech Commands' auxiliary words and digits: what `_unknown_` says."""
ESPEAK = "espeak-ng"
TEXT2WAVE = "text2wave"
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
FESTIVAL_VOICE_DIRS = (Path("/usr/share/festival/voices"),)
HTS_SUFFIX = "_hts"  # Festival voices of the HTS engine: the unseen-engine corpus
VOICE_HOLDOUT = 5  # every 5th espeak-ng voice (sorted, from the 3rd) is held out
STRETCH = (0.8, 1.3)  # Festival's Duration_Stretch
TAPE_SPEED = (0.9, 1.1)  # resampling factor after synthesis: tempo and pitch
SILENCE_DBFS = (-70.0, -20.0)  # RMS level of a `_silence_` clip
SILENCE_KINDS = ("digital", "white", "pink", "brown", "hum")
CLIP_SECONDS = 1.0
METADATA = "keywords.json"
NOISES = ("white", "pink", "brown", "hum")

# Variants (of `espeak-ng --voices=variant`) that sound like people; the robotic and novelty
# ones (Demonic, robosoft, UniRobot, ...) would teach the model sounds no microphone hears.
HUMAN_VARIANTS = frozenset(
    {f"m{i}" for i in range(1, 9)}
    | {f"f{i}" for i in range(1, 6)}
    | {"klatt", "klatt2", "klatt3", "klatt4", "croak", "whisper", "whisperf"}
    | {"adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "aunty", "belinda", "benjamin"}
    | {"david", "ed", "edward", "grandma", "grandpa", "john", "Lee", "linda", "max"}
    | {"Michael", "michel", "Mike", "norbert", "paul", "quincy", "rob", "robert", "shelby"}
    | {"steph", "travis", "victor"}
)

SPEED_WPM = (110, 220)  # espeak default 175
PITCH = (15, 85)  # 0..99, default 50
AMPLITUDE = (60, 160)  # 0..200, default 100
PEAK_DBFS = (-24.0, -2.0)  # level of the spoken word
SNR_DB = (5.0, 30.0)  # speech power over noise power
MAX_WORD_FRACTION = 0.95  # longest word, as a share of the clip, before re-speaking faster

FloatArray = npt.NDArray[np.float32]


class KeywordError(RuntimeError):
    """espeak-ng is missing, an engine failed, or the output folder cannot be used."""


@dataclass(frozen=True)
class KeywordSample:
    """Everything drawn for one file: enough to understand (and re-make) it."""

    file: str
    word: str  # the class
    index: int
    engine: str  # espeak-ng, festival, or "" for _silence_
    spoken: str  # what was said: the word, an auxiliary word for _unknown_, "" for silence
    voice: str
    variant: str
    speed: int
    pitch: int
    amplitude: int
    peak_dbfs: float
    shift_s: float
    noise: str
    snr_db: float
    rt60_s: float = 0.0  # the room's reverberation time; 0: no room (modelgen.datasets.room)
    low_cut_hz: float = 0.0  # the microphone band; 0: full band
    high_cut_hz: float = 0.0


@dataclass(frozen=True)
class KeywordsSummary:
    """What `generate_keywords` made."""

    out_dir: Path
    words: list[str]
    per_word: int
    files: int
    seconds: float
    voices: list[str]
    variants: list[str]
    engines: dict[str, list[str]]  # engine → the voices it had
    corpora: dict[str, Path]  # train / unseen_voices / unseen_engine → folder


def _espeak() -> str:
    path = shutil.which(ESPEAK)
    if path is None:
        raise KeywordError(
            "espeak-ng is not installed or not on PATH: install the Debian package espeak-ng "
            "(sudo apt-get install espeak-ng)"
        )
    return path


def _run(args: Sequence[str]) -> bytes:
    try:
        proc = subprocess.run(list(args), capture_output=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KeywordError(f"{' '.join(args)}: {exc}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise KeywordError(f"{' '.join(args)} failed ({proc.returncode}): {err}")
    return proc.stdout


def espeak_version() -> str:
    """The first line of `espeak-ng --version`."""
    return _run([_espeak(), "--version"]).decode(errors="replace").strip().splitlines()[0]


def english_voices() -> list[str]:
    """espeak-ng's own English voices (voice file ids such as gmw/en-GB-x-rp), sorted.

    MBROLA voices (mb/...) are listed too but need separate packages and print nothing
    without them, so they are left out.
    """
    text = _run([_espeak(), "--voices=en"]).decode(errors="replace")
    voices: set[str] = set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5:
            continue
        language, file = parts[1], parts[4]
        if language.startswith("en") and not file.startswith(("mb/", "!v/")):
            voices.add(file)
    if not voices:
        raise KeywordError("espeak-ng lists no English voices (espeak-ng --voices=en)")
    return sorted(voices)


def voice_variants() -> list[str]:
    """The human-sounding variants this espeak-ng has, sorted, plus "" (none)."""
    text = _run([_espeak(), "--voices=variant"]).decode(errors="replace")
    found = {
        m.group(1)
        for line in text.splitlines()
        if (m := re.search(r"\s!v/(\S+)\s*", line)) and m.group(1) in HUMAN_VARIANTS
    }
    return ["", *sorted(found)]


def parse_wav_bytes(data: bytes) -> tuple[FloatArray, int]:
    """A 16-bit PCM WAV in memory → (mono float32 in [-1, 1], sample rate).

    espeak-ng --stdout cannot seek back to fill in the RIFF and data sizes, so it writes
    0x7ffff000-ish placeholders; the data chunk is therefore read to the end of the bytes.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise KeywordError("espeak-ng output is not a WAV file")
    pos = 12
    channels = rate = bits = 0
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if chunk == b"fmt ":
            fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if fmt != 1 or bits != 16:
                raise KeywordError(f"espeak-ng WAV is format {fmt}, {bits} bit; expected PCM16")
        elif chunk == b"data":
            if not rate:
                raise KeywordError("espeak-ng WAV has its data before its fmt chunk")
            usable = len(body) - len(body) % (2 * channels)
            pcm = np.frombuffer(body[:usable], dtype="<i2").reshape(-1, channels)
            return (pcm.mean(axis=1) / 32768.0).astype(np.float32), rate
        pos += 8 + size + (size & 1)
    raise KeywordError("espeak-ng WAV has no data chunk")


def speak(word: str, voice: str, speed: int, pitch: int, amplitude: int) -> tuple[FloatArray, int]:
    """One utterance from espeak-ng via stdout (no temporary files)."""
    args = [_espeak(), "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch)]
    args += ["-a", str(amplitude), word]
    wave_, rate = parse_wav_bytes(_run(args))
    if wave_.size == 0 or not np.any(wave_):
        raise KeywordError(f"espeak-ng produced silence for {word!r} with voice {voice}")
    return wave_, rate


def festival_voices() -> list[str]:
    """The FESTIVAL_VOICES installed here (Debian's festvox packages), or [] without
    Festival."""
    if shutil.which(TEXT2WAVE) is None:
        return []
    installed = {p.name for d in FESTIVAL_VOICE_DIRS if d.is_dir() for p in d.glob("*/*")}
    return [v for v in FESTIVAL_VOICES if v in installed]


def speak_festival(text: str, voice: str, stretch: float) -> tuple[FloatArray, int]:
    """One utterance from Festival's text2wave (through temporary files: it cannot pipe)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "text.txt", Path(tmp) / "out.wav"
        src.write_text(text + "\n")
        _run([
            TEXT2WAVE, "-eval", f"(voice_{voice})",
            "-eval", f"(Parameter.set 'Duration_Stretch {stretch:.3f})",
            str(src), "-o", str(out),
        ])  # fmt: skip
        wave_, rate = parse_wav_bytes(out.read_bytes())
    if wave_.size == 0 or not np.any(wave_):
        raise KeywordError(f"festival produced silence for {text!r} with voice {voice}")
    return wave_, rate


def _trim(wave_: FloatArray, rate: int) -> FloatArray:
    """Cut leading/trailing silence: samples below -40 dB of the peak, with 10 ms margin."""
    loud = np.flatnonzero(np.abs(wave_) > 0.01 * np.abs(wave_).max())
    margin = rate // 100
    return wave_[max(0, loud[0] - margin) : loud[-1] + 1 + margin]


def make_noise(kind: str, n: int, rate: int, rng: np.random.Generator) -> FloatArray:
    """Unit-RMS background noise: white, pink (1/f), brown (1/f²) or mains hum."""
    if kind == "hum":
        t = np.arange(n) / rate
        mains = 50.0 if rng.random() < 0.5 else 60.0
        noise = np.zeros(n)
        for h in range(1, 6):  # the fundamental and its odd/even harmonics, decaying
            noise += (
                rng.uniform(0.2, 1.0)
                / h
                * np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 2 * np.pi))
            )
        noise += 0.05 * rng.standard_normal(n)
    else:
        white = rng.standard_normal(n)
        if kind == "white":
            noise = white
        else:
            spectrum = np.fft.rfft(white)
            freqs = np.fft.rfftfreq(n, 1 / rate)
            freqs[0] = freqs[1]
            power = 1.0 if kind == "pink" else 2.0
            noise = np.fft.irfft(spectrum / freqs ** (power / 2), n)
    noise -= noise.mean()
    rms = float(np.sqrt(np.mean(noise**2)))
    return (noise / rms).astype(np.float32)


def _rng(seed: int, word: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(word.encode("utf-8")), index])


def _silence(clip: int, sample_rate: int, rng: np.random.Generator) -> tuple[FloatArray, str]:
    """A clip without speech: a kind of SILENCE_KINDS at a level of SILENCE_DBFS."""
    kind = SILENCE_KINDS[int(rng.integers(len(SILENCE_KINDS)))]
    level = 10 ** (float(rng.uniform(*SILENCE_DBFS)) / 20)
    if kind == "digital":  # a muted or gated input: dither-level white noise
        return (rng.standard_normal(clip) * 2e-5).astype(np.float32), kind
    return make_noise(kind, clip, sample_rate, rng) * np.float32(level), kind


def _utterance(
    text: str, voice: str, variant: str, rng: np.random.Generator, sample_rate: int, clip: int
) -> tuple[FloatArray, int, int, int]:
    """`text` said by `voice` (`engine:name`), trimmed, at `sample_rate` after a random tape
    speed, no longer than the clip; with the speed, pitch and amplitude drawn."""
    engine, name = voice.split(":", 1)
    speed = int(rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1))
    pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
    amplitude = int(rng.integers(AMPLITUDE[0], AMPLITUDE[1] + 1))
    stretch = float(rng.uniform(*STRETCH))
    tape = float(rng.uniform(*TAPE_SPEED))
    for _ in range(4):  # a slow voice may not fit in the clip: say it faster
        if engine == ESPEAK:
            full = f"{name}+{variant}" if variant else name
            spoken, rate = speak(text, full, speed, pitch, amplitude)
        else:
            spoken, rate = speak_festival(text, name, stretch)
        spoken = resample(_trim(spoken, rate), round(rate * tape), sample_rate)
        if len(spoken) <= MAX_WORD_FRACTION * clip:
            break
        speed, stretch = int(speed * 1.3), stretch / 1.3
    if len(spoken) > clip:  # still too long: keep its middle
        start = (len(spoken) - clip) // 2
        spoken = spoken[start : start + clip]
    return spoken, speed, pitch, amplitude


def render_keyword(
    word: str,
    index: int,
    seed: int,
    voices: Sequence[str],
    variants: Sequence[str],
    sample_rate: int = 16000,
    corpus: str = "",
    room: RoomSpec = NO_ROOM,
) -> tuple[npt.NDArray[np.int16], KeywordSample]:
    """Make sample `index` of class `word` of `corpus` ("" for the training one) from
    `voices` (`engine:name`), in a room and through a microphone band as often as `room`
    says: (int16 samples of one clip, what was drawn). The room has its own random stream,
    so a clip without one is the same clip whatever `room` is."""
    rng = _rng(seed, corpus + word, index)
    rt60, drr, predelay, low_cut, high_cut = draw_room(
        room, _rng(seed, "room/" + corpus + word, index)
    )
    voice = voices[int(rng.integers(len(voices)))]
    variant = variants[int(rng.integers(len(variants)))] if voice.startswith(ESPEAK) else ""
    peak_dbfs = float(rng.uniform(*PEAK_DBFS))
    noise_kind = NOISES[int(rng.integers(len(NOISES)))]
    snr_db = float(rng.uniform(*SNR_DB))
    clip = round(CLIP_SECONDS * sample_rate)
    text = AUXILIARY[int(rng.integers(len(AUXILIARY)))] if word == UNKNOWN else word
    speed = pitch = amplitude = offset = 0
    if word == SILENCE:
        mix, noise_kind = _silence(clip, sample_rate, rng)
        voice = variant = text = ""
        peak_dbfs = snr_db = 0.0
    else:
        spoken, speed, pitch, amplitude = _utterance(text, voice, variant, rng, sample_rate, clip)
        peak = max(float(np.abs(spoken).max()), 1e-9)
        spoken = spoken * np.float32(10 ** (peak_dbfs / 20) / peak)
        offset = int(rng.integers(0, clip - len(spoken) + 1))
        signal = np.zeros(clip, dtype=np.float32)
        signal[offset : offset + len(spoken)] = spoken
        speech_rms = float(np.sqrt(np.mean(spoken.astype(np.float64) ** 2)))
        noise = make_noise(noise_kind, clip, sample_rate, rng) * np.float32(
            speech_rms / 10 ** (snr_db / 20)
        )
        if rt60:
            ir = impulse_response(
                rt60, drr, predelay, sample_rate, rng=_rng(seed, "ir/" + corpus + word, index)
            )
            signal = reverberate(signal, ir)
        mix = signal + noise
    if low_cut:
        mix = band_limit(mix, low_cut, high_cut, sample_rate)
    peak = float(np.abs(mix).max())
    if peak > 0.99:
        mix *= np.float32(0.99 / peak)
    pcm = np.clip(np.rint(mix * 32767.0), -32768, 32767).astype(np.int16)
    sample = KeywordSample(
        file=keyword_file(word, index),
        word=word,
        index=index,
        engine=voice.split(":", 1)[0] if voice else "",
        spoken=text,
        voice=voice.split(":", 1)[1] if voice else "",
        variant=variant,
        speed=speed,
        pitch=pitch,
        amplitude=amplitude,
        peak_dbfs=round(peak_dbfs, 3),
        shift_s=round(offset / sample_rate, 5),
        noise=noise_kind,
        snr_db=round(snr_db, 3),
        rt60_s=round(rt60, 4) if word != SILENCE else 0.0,
        low_cut_hz=round(low_cut, 1),
        high_cut_hz=round(high_cut, 1),
    )
    return pcm, sample


def keyword_file(word: str, index: int) -> str:
    """Relative path of sample `index` of `word`: `<word>/<word>_<index:05d>.wav`."""
    return f"{word}/{word}_{index:05d}.wav"


def write_wav(path: Path, pcm: npt.NDArray[np.int16], sample_rate: int) -> None:
    """16-bit mono PCM via the stdlib: a fixed 44-byte header, no timestamps, same bytes."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.astype("<i2").tobytes())


Job = tuple[Path, str, int, int, tuple[str, ...], tuple[str, ...], int, str, RoomSpec]


def _job(args: Job) -> KeywordSample:
    out_dir, word, index, seed, voices, variants, sample_rate, corpus, room = args
    pcm, sample = render_keyword(word, index, seed, voices, variants, sample_rate, corpus, room)
    write_wav(out_dir / sample.file, pcm, sample_rate)
    return sample


_OWN_FILE = re.compile(r"^_?[a-z]+_?_\d{5,}\.wav$")


def _prepare(out_dir: Path, words: Sequence[str]) -> None:
    """Make the folders; clear files of an earlier run (only ours) so none are stale."""
    if out_dir.exists() and not out_dir.is_dir():
        raise KeywordError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / METADATA).is_file():
        raise KeywordError(
            f"{out_dir} is not empty and holds no {METADATA}: choose an empty or new folder"
        )
    for old in sorted(out_dir.glob("*/*.wav")) if out_dir.is_dir() else []:
        if _OWN_FILE.match(old.name):
            old.unlink()
    for folder in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a word of an earlier run that is not wanted now
    for word in words:
        (out_dir / word).mkdir(parents=True, exist_ok=True)


def voice_split(espeak: Sequence[str], festival: Sequence[str]) -> dict[str, list[str]]:
    """Corpus → its voices (`engine:name`): the fixed rule of the module docstring."""
    held = {v for i, v in enumerate(sorted(espeak)) if i % VOICE_HOLDOUT == 2}
    return {
        "train": [f"{ESPEAK}:{v}" for v in sorted(espeak) if v not in held]
        + [f"festival:{v}" for v in festival if not v.endswith(HTS_SUFFIX)],
        "unseen_voices": [f"{ESPEAK}:{v}" for v in sorted(held)],
        "unseen_engine": [f"festival:{v}" for v in festival if v.endswith(HTS_SUFFIX)],
    }


def corpus_dirs(out_dir: Path) -> dict[str, Path]:
    return {
        "train": out_dir,
        "unseen_voices": out_dir.with_name(out_dir.name + "-unseen-voices"),
        "unseen_engine": out_dir.with_name(out_dir.name + "-unseen-engine"),
    }


def _make(jobs: list[Job], workers: int) -> list[KeywordSample]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="keywords", unit="clip", disable=None)
    samples: list[KeywordSample] = []
    try:
        if workers == 1:
            for job in jobs:
                samples.append(_job(job))
                bar.update()
        else:
            ctx = get_context("spawn")
            chunk = max(1, min(32, math.ceil(len(jobs) / (workers * 8))))
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                for sample in pool.map(_job, jobs, chunksize=chunk):
                    samples.append(sample)
                    bar.update()
    finally:
        bar.close()
    return samples


def generate_keywords(
    out_dir: str | Path,
    per_word: int,
    seed: int,
    words: Sequence[str] = KEYWORDS,
    sample_rate: int = 16000,
    workers: int = 2,
    heldout_per_word: int | None = None,
    background: bool = True,
    room: RoomSpec = NO_ROOM,
) -> KeywordsSummary:
    """Write `per_word` clips of each class to `out_dir/<class>/<class>_<index>.wav` (the
    words, and with `background` also _unknown_ and _silence_), and `heldout_per_word`
    (default per_word // 5, at least 1) of each to the held-out corpora beside it.

    Clips are 1 s, mono, 16-bit PCM at `sample_rate`; each corpus's keywords.json records
    the settings, the engines and voices found and used, and every clip's drawn
    parameters. `room` applies to the training corpus only: the held-out corpora stay as
    they were, so figures on them compare across training recipes. Work is spread over
    `workers` processes (spawned, so a parent holding torch threads is safe). Without
    Festival there is no unseen-engine corpus (it says so).
    """
    if per_word < 1:
        raise ValueError(f"per_word must be at least 1, got {per_word}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    words = list(words)
    for word in words:
        if not re.fullmatch(r"[a-z]+", word):
            raise ValueError(f"words must be lower-case letters only, got {word!r}")
        if word in AUXILIARY:
            raise ValueError(f"{word!r} is what _unknown_ says: it cannot be a keyword too")
    if len(set(words)) != len(words):
        raise ValueError("words must be distinct")
    held_n = max(1, per_word // 5) if heldout_per_word is None else heldout_per_word
    classes = [*words, UNKNOWN, SILENCE] if background else words
    start = time.perf_counter()
    version = espeak_version()
    espeak = english_voices()
    festival = festival_voices()
    variants = tuple(voice_variants())
    split = voice_split(espeak, festival)
    engines = {ESPEAK: espeak, "festival": festival}
    corpora = {k: d for k, d in corpus_dirs(Path(out_dir)).items() if split[k]}
    total = 0
    for corpus, folder in corpora.items():
        n = per_word if corpus == "train" else held_n
        _prepare(folder, classes)
        stream = "" if corpus == "train" else f"{corpus}/"
        voices = tuple(split[corpus])
        jobs = [
            (
                folder,
                c,
                i,
                seed,
                voices,
                variants,
                sample_rate,
                stream,
                room if corpus == "train" else NO_ROOM,
            )
            for c in classes
            for i in range(n)
        ]
        samples = _make(jobs, workers)
        total += len(samples)
        meta: dict[str, Any] = {
            "generator": "modelgen dataset keywords",
            "corpus": corpus,
            "espeak_ng": version,
            "engines_found": engines,
            "voices": list(voices),
            "held_out": {k: v for k, v in split.items() if k != "train"},
            "seed": seed,
            "room": asdict(room if corpus == "train" else NO_ROOM),
            "per_word": n,
            "sample_rate": sample_rate,
            "clip_seconds": CLIP_SECONDS,
            "words": words,
            "classes": classes,
            "variants": list(variants),
            "samples": [asdict(s) for s in samples],
        }
        (folder / METADATA).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return KeywordsSummary(
        out_dir=Path(out_dir),
        words=classes,
        per_word=per_word,
        files=total,
        seconds=time.perf_counter() - start,
        voices=split["train"],
        variants=list(variants),
        engines=engines,
        corpora=corpora,
    )
