"""Google Speech Commands v2 (speech_commands_v0.02) as its 12-class keyword task.

The folder as published: `<root>/<word>/<speaker>_nohash_<n>.wav` (16 kHz mono, 1 s or a
little shorter) in 35 word folders, `<root>/_background_noise_/*.wav` (six recordings of
about a minute), and `validation_list.txt` / `testing_list.txt` naming clips by their path
relative to the root. Users download it themselves; nothing is fetched here.

Classes, in label order: yes no up down left right on off stop go, `_unknown_`, `_silence_`
(or those of `classes`, chosen from these twelve).

- Split: with both lists, a clip the validation list names is in val, one the testing list
  names in test, every other one in train: the publisher's split, made by hashing the
  speaker id, so no speaker is in two parts. Without the lists, `split`'s seeded stratified
  split of the word clips (the other words folded into `_unknown_` first), made here so
  that the parts are fixed before `_silence_` is cut; it does not keep speakers apart.
- `_unknown_`: the clips of every other word folder. In each part it gets `unknown_share`
  times one keyword's mean count in that part, a seeded sample of that part's other-word
  clips (all of them if fewer): about one keyword's share by default, as in the dataset
  paper's and TensorFlow's 12-class setup; it would otherwise outnumber a keyword ~8 to 1.
- `_silence_`: `silence_share` times one keyword's mean count per part, 1 s clips cut from
  the noise recordings. Each recording is cut in time, its first 1 − val − test (`split`'s
  fractions, with the lists too) for train, then val, then test, so no stretch of noise is
  in two parts. Clip k of a part takes the recordings long enough for a clip in turn
  (k mod their number), on each round the next gain of `silence_gains_db` (default down to
  −60 dB: near-silence), and a start drawn from a generator seeded by (split.seed, part, k);
  clips of one part may overlap. They are named `_silence_/<part>-<k>-<recording><gain>dB`.

`max_per_class` keeps the first clips of each keyword in sorted path order, before the
split; `_unknown_` and `_silence_` follow through their shares. Every draw comes from
split.seed: the same folder and spec give the same samples, names and parts.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from edvit import media
from edvit.config.dataset import SpeechCommandsDataset
from modelgen.datasets.audiofolder import NOISE_FOLDER, read_wav, skip_folder
from modelgen.datasets.base import (
    Dataset,
    DatasetError,
    IndexArray,
    resolve_root,
    scan_class_folders,
    select_classes,
    source_name,
)
from modelgen.datasets.keywords import KEYWORDS, SILENCE, UNKNOWN
from modelgen.datasets.split import PARTS, round_half_up, stratified_split

CLASSES: tuple[str, ...] = (*KEYWORDS, UNKNOWN, SILENCE)
LISTS = {"val": "validation_list.txt", "test": "testing_list.txt"}
CLIP_SECONDS = 1
_UNKNOWN_DRAW, _SILENCE_DRAW = 1, 2  # separate streams of split.seed


def _read_list(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line number, clip path) of each non-empty line; a clip that is not there is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from None
    entries: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not (root / rel).is_file():
            raise DatasetError(
                f"{path}:{number}: names {root / rel}, which is not a file under {root}"
            )
        entries.append((number, rel.as_posix()))
    return entries


def listed_parts(root: Path, sources: list[str]) -> IndexArray | None:
    """Each source's part (0 train, 1 val, 2 test) by the dataset's lists; None without them."""
    paths = {part: root / name for part, name in LISTS.items()}
    present = [part for part, path in paths.items() if path.is_file()]
    if not present:
        return None
    if len(present) == 1:
        missing = next(part for part in paths if part not in present)
        raise DatasetError(
            f"{paths[missing]} is missing but {paths[present[0]]} is there: Speech Commands "
            "v2 has both (remove both for a seeded split)"
        )
    part_of: dict[str, int] = {}
    for part, path in paths.items():
        for number, name in _read_list(path, root):
            if name in part_of:
                raise DatasetError(
                    f"{path}:{number}: {name} is in the {PARTS[part_of[name]]} list too"
                )
            part_of[name] = PARTS.index(part)
    return np.asarray([part_of.get(s, 0) for s in sources], dtype=np.int64)


def cut_silence(
    root: Path, spec: SpeechCommandsDataset, counts: list[int]
) -> list[tuple[int, str, media.FloatArray]]:
    """(part, name, clip) of `counts[part]` 1 s clips per part, as the module docstring says."""
    folder = root / NOISE_FOLDER
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: no such folder; _silence_ is cut from its noise recordings (leave "
            "_silence_ out of dataset.classes to do without)"
        )
    paths = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in media.SOUND_EXTENSIONS and p.name[0] != "."
    )
    if not paths:
        raise DatasetError(f"{folder}: no sound files to cut _silence_ from")
    waves = [read_wav(p, spec.sample_rate) for p in paths]
    clip = CLIP_SECONDS * spec.sample_rate
    train_end = 1 - spec.split.val_fraction - spec.split.test_fraction
    cuts = (0.0, train_end, 1 - spec.split.test_fraction, 1.0)
    gains = spec.silence_gains_db
    clips: list[tuple[int, str, media.FloatArray]] = []
    for part, n in enumerate(counts):
        bounds = [(int(len(w) * cuts[part]), int(len(w) * cuts[part + 1])) for w in waves]
        usable = [i for i, (a, b) in enumerate(bounds) if b - a >= clip]
        if n and not usable:
            raise DatasetError(
                f"{folder}: no recording has {CLIP_SECONDS} s in its {PARTS[part]} stretch "
                f"({cuts[part]:.2f}–{cuts[part + 1]:.2f} of its length): _silence_ needs "
                "longer ones"
            )
        for k in range(n):
            i = usable[k % len(usable)]
            gain = gains[(k // len(usable)) % len(gains)]
            a, b = bounds[i]
            rng = np.random.default_rng([spec.split.seed, _SILENCE_DRAW, part, k])
            start = a + int(rng.integers(0, b - a - clip + 1))
            sample = waves[i][start : start + clip] * np.float32(10 ** (gain / 20))
            name = f"{SILENCE}/{PARTS[part]}-{k:05d}-{paths[i].stem}{gain:+g}dB"
            clips.append((part, name, sample.astype(np.float32)))
    return clips


def load_speech_commands(spec: SpeechCommandsDataset, base_dir: Path | None = None) -> Dataset:
    """The 12-class task of a Speech Commands v2 folder, its parts fixed (official_val and
    official_test): the lists' when present, else the seeded split."""
    root = resolve_root(spec.root, base_dir)
    words, files = scan_class_folders(
        root, media.SOUND_EXTENSIONS, None, None, skip_folder=skip_folder, what="sound"
    )
    classes = select_classes(CLASSES, spec.classes, f"speech_commands {root}")
    keywords = [c for c in classes if c in KEYWORDS]
    if not keywords:
        raise DatasetError(
            f"speech_commands {root}: dataset.classes needs a keyword: _unknown_ and "
            "_silence_ are sized by the keywords' counts"
        )
    if missing := [w for w in keywords if w not in words]:
        raise DatasetError(
            f"{root / missing[0]}: no such word folder (Speech Commands v2 has one per word)"
        )
    label = {c: i for i, c in enumerate(classes)}
    capped = {label[k] for k in keywords}
    if UNKNOWN in label and spec.unknown_share is None:
        capped.add(label[UNKNOWN])
    seen = dict.fromkeys(capped, 0)
    clips: list[tuple[int, Path]] = []
    for w, path in files:
        name = words[w] if words[w] in KEYWORDS else UNKNOWN
        if name not in label:
            continue
        lab = label[name]
        if lab in seen:
            if spec.max_per_class is not None and seen[lab] >= spec.max_per_class:
                continue
            seen[lab] += 1
        clips.append((lab, path))
    labels = np.asarray([lab for lab, _ in clips], dtype=np.int64)
    if UNKNOWN in label and not (labels == label[UNKNOWN]).any():
        raise DatasetError(f"{root}: no word folders besides the keywords: _unknown_ is empty")
    sources = [source_name(path, root) for _, path in clips]

    parts = listed_parts(root, sources)
    if parts is None:
        s = spec.split
        split = stratified_split(labels, s.val_fraction, s.test_fraction, s.seed)
        parts = np.zeros(len(labels), dtype=np.int64)
        parts[split.val], parts[split.test] = 1, 2
    keyword_labels = [label[k] for k in keywords]
    mean = [np.isin(labels[parts == p], keyword_labels).sum() / len(keywords) for p in range(3)]

    keep = np.ones(len(labels), dtype=bool)
    if UNKNOWN in label and spec.unknown_share is not None:
        for p in range(len(PARTS)):
            pool = np.flatnonzero((labels == label[UNKNOWN]) & (parts == p))
            rng = np.random.default_rng([spec.split.seed, _UNKNOWN_DRAW, p])
            keep[pool] = False
            keep[rng.permutation(pool)[: round_half_up(spec.unknown_share * mean[p])]] = True
    entries: list[tuple[int, str, int, Path | media.FloatArray]] = [
        (int(labels[i]), sources[i], int(parts[i]), clips[i][1]) for i in np.flatnonzero(keep)
    ]
    if SILENCE in label:
        counts = [round_half_up(spec.silence_share * m) for m in mean]
        entries += [
            (label[SILENCE], name, part, clip)
            for part, name, clip in cut_silence(root, spec, counts)
        ]
    entries.sort(key=lambda e: (e[0], e[1]))
    part_of = np.asarray([e[2] for e in entries], dtype=np.int64)
    return Dataset(
        kind="audio",
        classes=classes,
        samples=[read_wav(x, spec.sample_rate) if isinstance(x, Path) else x for *_, x in entries],
        labels=np.asarray([e[0] for e in entries], dtype=np.int64),
        sources=[e[1] for e in entries],
        sample_rate=spec.sample_rate,
        official_test=np.flatnonzero(part_of == 2).astype(np.int64),
        official_val=np.flatnonzero(part_of == 1).astype(np.int64),
    )
