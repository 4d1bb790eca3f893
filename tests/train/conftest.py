"""Fixtures of the training tests: a small prepared data folder from the real Beauty data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from gloss.edge.files import read_jsonl, write_jsonl_atomic

BEAUTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon2014" / "beauty"


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`prepare_data` output for the first 20 Beauty users (18 train-only, 2 validation users)."""
    from gloss.train.data import prepare_data

    if not BEAUTY.is_dir():
        pytest.skip("shared Beauty data not found")
    tmp = tmp_path_factory.mktemp("prepared")
    write_jsonl_atomic(tmp / "seq.jsonl.gz", list(read_jsonl(BEAUTY / "sequences.jsonl.gz"))[:20])
    return prepare_data(
        tmp / "data",
        items_path=BEAUTY / "items.jsonl.gz",
        sequences_path=tmp / "seq.jsonl.gz",
        validation_fraction=0.1,
    )


@pytest.fixture
def make_config(prepared_dir: Path, tiny_llama_dir: Path, tmp_path: Path):
    """Factory of TrainConfigs for fast CPU runs of the tiny model on ``prepared_dir`` (out_dir under tmp)."""
    from gloss.train.config import TrainConfig

    def make(**kw):
        defaults = dict(
            data_dir=prepared_dir,
            out_dir=tmp_path / "run",
            base_model=str(tiny_llama_dir),
            load_in_4bit=False,
            max_steps=2,
            per_device_batch_size=2,
            grad_accum=1,
            warmup_steps=0,
            max_seq_length=256,
            logging_steps=1,
            eval_max_users=2,
        )
        return TrainConfig(**{**defaults, **kw})

    return make


@pytest.fixture
def one_item_histories_dir(tmp_path):
    """Prepared data where every training user's history has one item (each user bought 3 items)."""
    from gloss.train.data import prepare_data

    items = tmp_path / "items.jsonl.gz"
    sequences = tmp_path / "sequences.jsonl.gz"
    with gzip.open(items, "wt") as handle:
        handle.writelines(json.dumps({"asin": f"A{i}", "title": f"Item {i}"}) + "\n" for i in range(30))
    with gzip.open(sequences, "wt") as handle:
        handle.writelines(json.dumps({"user": f"u{u}", "items": [f"A{3 * u + j}" for j in range(3)]}) + "\n"
                          for u in range(10))
    return prepare_data(tmp_path / "data", items_path=items, sequences_path=sequences, validation_fraction=0.3)
