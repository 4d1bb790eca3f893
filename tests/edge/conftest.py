"""Fixtures shared by the edge tests: the Beauty fixture catalogue and its (hash-embedded) item vectors."""

from __future__ import annotations

import numpy as np
import pytest

from gloss.edge.catalog import Catalog, load_catalog
from gloss.edge.prompt import render_item
from tests.conftest import CATALOG_PATH
from tests.fakes import HashEmbedder


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(CATALOG_PATH)


@pytest.fixture(scope="module")
def item_vectors(catalog: Catalog) -> np.ndarray:
    return HashEmbedder().embed([render_item(t) for t in catalog.titles])
