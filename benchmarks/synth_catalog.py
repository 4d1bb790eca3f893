"""Seeded synthetic catalogues and purchase sequences of any size, grown from real Amazon 2014 data.

Items: synthetic item ``i`` has the real *source* item ``perm[i % R]`` (``R`` real items, ``perm`` a seeded
permutation), so the catalogue is ``ceil(N / R)`` shuffled copies of the real one. Its title starts with the
first words of the source's title and ends with words from another real title, at a length drawn from the
real titles' word counts (so titles look real, stay near their source in embedding space, and rarely repeat).
Ids are ``S`` + 9 digits (10 characters, like an ASIN); item ``i`` does not depend on ``N``, so a small
catalogue is a prefix of a larger one and ``new_items`` (ids from ``N``) are new to a catalogue of ``N``.

Users: random walks over the real next-item transitions (each consecutive pair of a real user's sequence),
started at real first items, with real sequence lengths, ``interactions_per_item`` interactions per item on
average. A walk stays in one copy of the catalogue and moves to another copy with ``jump_prob`` per step
(copies weighted by how many of their items exist); steps on items outside the catalogue (``N < R``, or the
last, partial copy) are not recorded, so the recorded next-item pairs are real ones, or real two-step ones.

Both files use the shared JSONL format (items ``{"asin", "title"}``, sequences ``{"user", "items"}``), gzip'd,
written chunk by chunk: memory stays at a few hundred MB for any ``N`` (10M items: ~10 min on one core).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger("benchmarks.synth_catalog")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2014"
CATEGORIES = ("beauty", "toys", "sports")
ITEM_CHUNK = 100_000  # fixed (not a setting): item i's title depends only on (seed, i)
USER_CHUNK = 100_000
ASIN_DIGITS = 9
MAX_WALK_FACTOR = 200  # a walk that records fewer items than its length after this many steps per item stops


@dataclass(frozen=True)
class SynthConfig:
    """What to generate."""

    num_items: int
    seed: int = 0
    interactions_per_item: float = 16.0  # Beauty 16.4, Toys 14.1, Sports 16.2
    jump_prob: float = 0.1  # per step: move to another copy of the real catalogue
    compresslevel: int = 1  # gzip level: fast to write; the files are read once per build

    def __post_init__(self) -> None:
        if self.num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {self.num_items}")
        if self.num_items >= 10**ASIN_DIGITS:
            raise ValueError(f"num_items must be < {10**ASIN_DIGITS}, got {self.num_items}")
        if self.interactions_per_item <= 0 or not 0 <= self.jump_prob <= 1:
            raise ValueError("interactions_per_item must be > 0 and jump_prob in [0, 1]")


@dataclass(frozen=True)
class Source:
    """The real data the generator samples from (``R`` items)."""

    words: tuple[tuple[str, ...], ...]  # each real title's words
    succ_ptr: np.ndarray  # CSR of next-item transitions: successors of real item a are succ[ptr[a]:ptr[a+1]]
    succ: np.ndarray
    starts: np.ndarray  # first item of every real sequence
    lengths: np.ndarray  # every real sequence's length
    title_lengths: np.ndarray  # every real title's word count

    @property
    def num_items(self) -> int:
        """``R``: real items."""
        return len(self.words)


def _read_jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def load_source(pairs: Sequence[tuple[Path, Path]]) -> Source:
    """Read real ``(items, sequences)`` JSONL(.gz) file pairs into one :class:`Source`.

    Items repeated across files keep their first title; sequence items without a title are skipped.
    """
    index: dict[str, int] = {}
    words: list[tuple[str, ...]] = []
    src, dst, starts, lengths = [], [], [], []
    for items_path, sequences_path in pairs:
        for row in _read_jsonl(Path(items_path)):
            if row["asin"] not in index and row["title"].split():
                index[row["asin"]] = len(words)
                words.append(tuple(row["title"].split()))
        for row in _read_jsonl(Path(sequences_path)):
            seq = [index[a] for a in row["items"] if a in index]
            if not seq:
                continue
            starts.append(seq[0])
            lengths.append(len(seq))
            src.extend(seq[:-1])
            dst.extend(seq[1:])
    if not words or not starts:
        raise ValueError("no real items or sequences in the source files")
    src_arr, dst_arr = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    order = np.argsort(src_arr, kind="stable")
    ptr = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(np.bincount(src_arr, minlength=len(words)), out=ptr[1:])
    return Source(words=tuple(words), succ_ptr=ptr, succ=dst_arr[order], starts=np.asarray(starts, dtype=np.int64),
                  lengths=np.asarray(lengths, dtype=np.int64),
                  title_lengths=np.asarray([len(w) for w in words], dtype=np.int64))


def shared_source(data_root: Path = SHARED_DATA, categories: Sequence[str] = CATEGORIES) -> Source:
    """The Beauty, Toys and Sports data of ``../shared/data/amazon2014`` as one source."""
    return load_source([(data_root / c / "items.jsonl.gz", data_root / c / "sequences.jsonl.gz") for c in categories])


def item_asin(i: int) -> str:
    """The id of synthetic item ``i``."""
    return f"S{i:0{ASIN_DIGITS}d}"


def _permutation(source: Source, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0]).permutation(source.num_items)


def _title_chunk(source: Source, chunk: int, perm: np.ndarray, seed: int, lo: int, hi: int) -> list[str]:
    """Titles of items ``chunk * ITEM_CHUNK + lo`` .. ``+ hi - 1`` (the chunk's draws are made in full, so a
    title does not depend on which part of its chunk is asked for)."""
    rng = np.random.default_rng([seed, 1, chunk])
    ids = np.arange(chunk * ITEM_CHUNK, (chunk + 1) * ITEM_CHUNK)
    heads = perm[ids % source.num_items][lo:hi]
    target = source.title_lengths[rng.integers(source.num_items, size=ITEM_CHUNK)][lo:hi]
    tails = rng.integers(source.num_items, size=ITEM_CHUNK)[lo:hi]
    split, offset = rng.random(ITEM_CHUNK)[lo:hi], rng.random(ITEM_CHUNK)[lo:hi]
    titles = []
    for head, length, tail, u, v in zip(heads.tolist(), target.tolist(), tails.tolist(), split.tolist(),
                                        offset.tolist(), strict=True):
        first, second = source.words[head], source.words[tail]
        keep = min(len(first), max(1, int(u * length)))  # head words; the rest of the length from the tail
        rest = max(1, length - keep)
        start = int(v * max(1, len(second) - rest + 1))
        titles.append(" ".join(first[:keep] + second[start : start + rest]))
    return titles


def item_rows(source: Source, start: int, count: int, seed: int = 0) -> Iterator[tuple[str, str]]:
    """``(asin, title)`` of synthetic items ``start`` .. ``start + count - 1`` (independent of any ``N``)."""
    perm = _permutation(source, seed)
    end = start + count
    for chunk in range(start // ITEM_CHUNK, math.ceil(end / ITEM_CHUNK)):
        base = chunk * ITEM_CHUNK
        lo, hi = max(start, base) - base, min(end, base + ITEM_CHUNK) - base
        titles = _title_chunk(source, chunk, perm, seed, lo, hi)
        for offset, title in enumerate(titles):
            yield item_asin(base + lo + offset), title


@contextlib.contextmanager
def _gzip_writer(path: Path, compresslevel: int) -> Iterator[gzip.GzipFile]:
    """A gzip stream without a timestamp in its header: the same data gives the same bytes."""
    with open(path, "wb") as handle, gzip.GzipFile(fileobj=handle, mode="wb", compresslevel=compresslevel,
                                                   mtime=0) as out:
        yield out


def write_items(path: Path, source: Source, start: int, count: int, seed: int = 0, compresslevel: int = 1) -> Path:
    """Write items ``start`` .. ``start + count - 1`` as ``{"asin", "title"}`` JSONL.gz."""
    with _gzip_writer(path, compresslevel) as raw, io.TextIOWrapper(raw, encoding="utf-8") as out:
        batch = []
        for asin, title in item_rows(source, start, count, seed):
            batch.append(f'{{"asin": "{asin}", "title": {json.dumps(title)}}}\n')
            if len(batch) >= ITEM_CHUNK:
                out.write("".join(batch))
                batch.clear()
        out.write("".join(batch))
    return path


def _copy_weights(num_items: int, num_real: int) -> np.ndarray:
    copies = math.ceil(num_items / num_real)
    sizes = np.minimum(num_real, num_items - num_real * np.arange(copies))
    return sizes / sizes.sum()


def walk_users(source: Source, num_items: int, lengths: np.ndarray, perm: np.ndarray, rng: np.random.Generator,
               jump_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """Random walks for ``len(lengths)`` users: ``(flat item ids, offsets)``; user ``u`` has
    ``ids[offsets[u]:offsets[u + 1]]`` (shorter than ``lengths[u]`` only if the walk got stuck).
    ``perm`` maps a position within a copy of the catalogue to its real source item."""
    num_real = source.num_items
    slot = np.empty(num_real, dtype=np.int64)  # real item -> position within a copy
    slot[perm] = np.arange(num_real)
    weights = _copy_weights(num_items, num_real)
    deg = np.diff(source.succ_ptr)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.int64)
    count = np.zeros(len(lengths), dtype=np.int64)
    last = np.full(len(lengths), -1, dtype=np.int64)
    copy = rng.choice(len(weights), size=len(lengths), p=weights)
    state = source.starts[rng.integers(len(source.starts), size=len(lengths))]
    active = np.arange(len(lengths))
    for _ in range(MAX_WALK_FACTOR * int(lengths.max(initial=1))):
        if not active.size:
            break
        real = state[active]
        ids = copy[active] * num_real + slot[real]
        seen = (ids < num_items) & (ids != last[active])  # real users do not buy one item twice in a row
        users = active[seen]
        out[offsets[users] + count[users]] = ids[seen]
        last[users] = ids[seen]
        count[users] += 1
        pick = source.succ_ptr[real] + (rng.random(len(real)) * deg[real]).astype(np.int64)
        restart = source.starts[rng.integers(len(source.starts), size=len(real))]
        state[active] = np.where(deg[real] > 0, source.succ[np.minimum(pick, len(source.succ) - 1)], restart)
        jump = active[rng.random(len(real)) < jump_prob]
        copy[jump] = rng.choice(len(weights), size=len(jump), p=weights)
        active = active[count[active] < lengths[active]]
    if active.size:  # stuck walks keep what they recorded
        keep = np.concatenate([out[offsets[u] : offsets[u] + count[u]] for u in range(len(lengths))])
        offsets[1:] = np.cumsum(count)
        out = keep
    return out, offsets


def _digits(values: np.ndarray) -> np.ndarray:
    """(n, ASIN_DIGITS) ASCII digits of non-negative integers, zero-padded."""
    powers = 10 ** np.arange(ASIN_DIGITS - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] // powers) % 10 + ord("0")).astype(np.uint8)


def sequence_lines(first_user: int, ids: np.ndarray, offsets: np.ndarray) -> bytes:
    """``{"user":"U#########","items":["S#########",...]}`` lines, assembled as bytes without a Python loop."""
    counts = np.diff(offsets)
    keep = counts > 0
    users = np.arange(first_user, first_user + len(counts))[keep]
    counts = counts[keep]
    head, item, tail = b'{"user":"U', b'","items":[', b"]}\n"
    item_width = 13  # "S#########",
    head_width = len(head) + ASIN_DIGITS + len(item)
    sizes = head_width + item_width * counts + len(tail) - 1
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    buf = np.empty(int(sizes.sum()), dtype=np.uint8)
    fixed = np.frombuffer(head + b"0" * ASIN_DIGITS + item, dtype=np.uint8)
    buf[starts[:, None] + np.arange(head_width)] = fixed
    buf[starts[:, None] + len(head) + np.arange(ASIN_DIGITS)] = _digits(users)
    owner = np.repeat(np.arange(len(counts)), counts)
    position = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    item_starts = starts[owner] + head_width + item_width * position
    template = np.frombuffer(b'"S' + b"0" * ASIN_DIGITS + b'",', dtype=np.uint8)
    buf[item_starts[:, None] + np.arange(item_width)] = template
    buf[item_starts[:, None] + 2 + np.arange(ASIN_DIGITS)] = _digits(ids)
    buf[(starts + sizes - len(tail))[:, None] + np.arange(len(tail))] = np.frombuffer(tail, dtype=np.uint8)
    return buf.tobytes()


def write_sequences(path: Path, source: Source, config: SynthConfig,
                    keep_histories: int = 0) -> tuple[dict[str, float], list[list[str]]]:
    """Write the users' random walks as ``{"user", "items"}`` JSONL.gz, chunk by chunk.

    Returns:
        Statistics (users, interactions, items with at least one interaction) and the item ids of the first
        ``keep_histories`` users with at least 3 items (for requests that look like real ones).
    """
    mean_length = float(source.lengths.mean())
    num_users = max(1, round(config.interactions_per_item * config.num_items / mean_length))
    perm = _permutation(source, config.seed)
    hits = np.zeros(config.num_items, dtype=np.int32)
    histories: list[list[str]] = []
    interactions = 0
    with _gzip_writer(path, config.compresslevel) as out:
        for chunk, first in enumerate(range(0, num_users, USER_CHUNK)):
            rng = np.random.default_rng([config.seed, 2, config.num_items, chunk])
            lengths = source.lengths[rng.integers(len(source.lengths), size=min(USER_CHUNK, num_users - first))]
            ids, offsets = walk_users(source, config.num_items, lengths, perm, rng, config.jump_prob)
            out.write(sequence_lines(first, ids, offsets))
            hits += np.bincount(ids, minlength=config.num_items).astype(np.int32)
            interactions += len(ids)
            for u in range(len(offsets) - 1):
                if len(histories) >= keep_histories:
                    break
                if offsets[u + 1] - offsets[u] >= 3:
                    histories.append([item_asin(i) for i in ids[offsets[u] : offsets[u + 1]].tolist()])
    stats = {"users": num_users, "interactions": interactions,
             "interactions_per_item": round(interactions / config.num_items, 2),
             "items_with_interactions": round(float((hits > 0).mean()), 4)}
    return stats, histories


def generate_dataset(out_dir: Path, source: Source, config: SynthConfig, num_new: int = 1000,
                     num_histories: int = 1000) -> dict:
    """Write ``items.jsonl.gz``, ``sequences.jsonl.gz``, ``new_items.jsonl.gz`` (``num_new`` items after the
    catalogue's, for ``gloss-export update``), ``histories.json`` and, last, ``synth.json`` (settings and
    statistics). A folder whose ``synth.json`` has the same settings is reused as it is.

    Returns:
        The contents of ``synth.json``.
    """
    out_dir = Path(out_dir)
    marker = out_dir / "synth.json"
    settings = {"num_items": config.num_items, "seed": config.seed, "jump_prob": config.jump_prob,
                "interactions_per_item_target": config.interactions_per_item, "num_new": num_new,
                "num_histories": num_histories, "real_items": source.num_items}
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("settings") == settings:
            return done
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    write_items(out_dir / "items.jsonl.gz", source, 0, config.num_items, config.seed, config.compresslevel)
    items_s = time.perf_counter() - start
    stats, histories = write_sequences(out_dir / "sequences.jsonl.gz", source, config, keep_histories=num_histories)
    write_items(out_dir / "new_items.jsonl.gz", source, config.num_items, num_new, config.seed, config.compresslevel)
    (out_dir / "histories.json").write_text(json.dumps(histories))
    done = {"settings": settings, "stats": stats, "items_s": round(items_s, 1),
            "total_s": round(time.perf_counter() - start, 1)}
    marker.write_text(json.dumps(done, indent=2))
    logger.info("synthetic catalogue %s: %d items, %s in %.0f s", out_dir, config.num_items, stats, done["total_s"])
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-items", type=int, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", type=Path, default=SHARED_DATA)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    done = generate_dataset(args.out_dir, shared_source(args.data_root), SynthConfig(args.num_items, seed=args.seed))
    print(json.dumps(done, indent=2))


if __name__ == "__main__":
    main()
