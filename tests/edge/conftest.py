"""Fixtures shared by the edge tests: the Beauty fixture catalogue and its (hash-embedded) item vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gloss.edge.catalog import Catalog, load_catalog
from gloss.edge.prompt import render_item
from tests.conftest import FIXTURES
from tests.fakes import HashEmbedder

CATALOG_PATH = FIXTURES / "beauty_items.jsonl"


def build_tiny_bundle(root: Path, name: str = "bundle") -> Path:
    """A real bundle of the fixture catalogue under ``root / name``, with a tiny ONNX embedder (no generator)."""
    from gloss.export.bundle import build_bundle
    from tests.edge.test_embed import write_tiny_embedder

    texts = [render_item(t) for t in load_catalog(CATALOG_PATH).titles]
    embedder = write_tiny_embedder(root / "embedder", texts=texts)
    return build_bundle(CATALOG_PATH, root / name, embedder_dir=embedder, name="beauty")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(CATALOG_PATH)


@pytest.fixture(scope="module")
def item_vectors(catalog: Catalog) -> np.ndarray:
    return HashEmbedder().embed([render_item(t) for t in catalog.titles])
