"""The playground's server side: GET /search (pure functions and over HTTP), GET /, /static/*, GET /bundle, the
``llm`` and ``query_items`` additions to POST /recommend, and what the page's files may not do (inline script,
innerHTML)."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from gloss.edge.catalog import Catalog
from gloss.edge.inspect import inspect_bundle
from gloss.edge.prompt import render_item
from gloss.edge.recommend import Recommender
from gloss.edge.server.app import RecommendService, ServeConfig
from gloss.edge.server.playground import ASSETS, CSP, PAGE, SEARCH_PENDING, STATIC_DIR, _Playground, bundle_facts
from gloss.edge.server.request import handle_request, parse_request, run_batch
from gloss.edge.server.search import MAX_QUERY_CHARS, MAX_SEARCH_K, CatalogSearch, SearchRequest, parse_search
from tests.edge.test_serve import parse_prometheus
from tests.edge.test_serve_http import HOST, GatedGenerator, hold, post, running
from tests.fakes import BruteForceIndex, HashEmbedder, ScriptedGenerator

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])


@pytest.fixture
def searcher(catalog: Catalog, item_vectors: np.ndarray) -> CatalogSearch:
    return CatalogSearch(catalog, HashEmbedder(), BruteForceIndex(item_vectors))


# --- GET /search as pure functions ---


def test_parse_search_reads_q_and_k():
    assert parse_search([("q", "  shampoo ")]) == SearchRequest("shampoo", 10)
    assert parse_search([("k", "3"), ("q", "x")]) == SearchRequest("x", 3)
    assert parse_search([("q", "a" * MAX_QUERY_CHARS), ("k", str(MAX_SEARCH_K))]).k == MAX_SEARCH_K


@pytest.mark.parametrize(
    "params, message",
    [
        ([], "'q' is missing"),
        ([("q", "   ")], "'q' is missing or empty"),
        ([("q", "a" * (MAX_QUERY_CHARS + 1))], f"at most {MAX_QUERY_CHARS}"),
        ([("q", "a"), ("k", "0")], "'k' must be an integer"),
        ([("q", "a"), ("k", str(MAX_SEARCH_K + 1))], "'k' must be an integer"),
        ([("q", "a"), ("k", "1e3")], "'k' must be an integer"),
        ([("q", "a"), ("k", "\u0663")], "'k' must be an integer"),  # an Arabic-Indic digit: isdigit, not ASCII
        ([("q", "a"), ("q", "b")], "given twice"),
        ([("q", "a"), ("x", "1")], "unknown parameter 'x'"),
    ],
)
def test_parse_search_rejects_bad_queries(params, message: str):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_search(params)


def test_substring_search_equals_a_brute_force_scan(catalog: Catalog, searcher: CatalogSearch):
    for q in ("shampoo", "SHAMPOO", "oz", "nail polish", "zzz-not-there"):
        needle = q.casefold()
        hits = [i for i, t in enumerate(catalog.titles) if needle in t.casefold()]
        expected = [i for i in hits if catalog.titles[i].casefold().startswith(needle)]
        expected += [i for i in hits if i not in expected]
        found, total = searcher.substring(q, 5)
        assert found == expected[:5] and total == len(hits)


def test_the_folded_titles_are_built_at_the_first_search_only(catalog: Catalog, item_vectors: np.ndarray):
    """A server that nobody searches holds no per-title strings (they cost O(N) at a million items)."""
    searcher = CatalogSearch(catalog, HashEmbedder(), BruteForceIndex(item_vectors))
    assert "_folded" not in vars(searcher)
    searcher.substring("oz", 3)
    assert len(vars(searcher)["_folded"]) == len(catalog)


def test_an_item_id_is_found_first(catalog: Catalog, searcher: CatalogSearch):
    asin = catalog.asins[17]
    assert searcher.substring(asin, 3)[0][0] == 17


def test_similar_titles_equal_a_brute_force_nearest_neighbour_search(
    catalog: Catalog, item_vectors: np.ndarray, searcher: CatalogSearch
):
    q, skip = "Shampoo for dry hair", [3, 5]
    query = HashEmbedder().embed([render_item(q)])[0]
    sims = item_vectors @ query
    expected = [int(i) for i in np.argsort(-sims, kind="stable") if int(i) not in skip][:6]
    found = searcher.similar(q, 6, skip=skip)
    assert [p for p, _ in found] == expected
    assert [s for _, s in found] == pytest.approx([float(sims[i]) for i in expected], abs=1e-5)


def test_search_reply_lists_matches_then_other_similar_titles(catalog: Catalog, searcher: CatalogSearch):
    reply = searcher.search(SearchRequest("shampoo", 4))
    matched = [m["asin"] for m in reply["matches"]]
    assert len(matched) == 4 and reply["num_matches"] >= 4
    assert all("shampoo" in m["title"].lower() for m in reply["matches"])
    assert len(reply["similar"]) == 4 and not {s["asin"] for s in reply["similar"]} & set(matched)


# --- POST /recommend: the page's additions (llm switch, exact catalogue titles) ---


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_query_items_say_which_generated_titles_are_catalogue_titles(catalog: Catalog, item_vectors: np.ndarray):
    invented = "A title that is in no catalogue"
    generator = ScriptedGenerator([catalog.titles[7], invented, catalog.titles[9]])
    recommender = Recommender(catalog, HashEmbedder(), BruteForceIndex(item_vectors), generator)
    status, reply = handle_request(recommender, body(history=list(catalog.asins[:3]), k=3, explain=True))
    assert status == 200
    assert reply["query_items"] == [catalog.asins[7], None, catalog.asins[9]]
    generator.enqueue([invented])
    status, reply = handle_request(recommender, body(history=list(catalog.asins[:3]), k=3))
    assert status == 200 and "query_items" not in reply  # only with explain


def test_llm_false_answers_as_the_recommender_without_its_generator(catalog: Catalog, item_vectors: np.ndarray):
    generator = ScriptedGenerator()
    index = BruteForceIndex(item_vectors)
    recommender = Recommender(catalog, HashEmbedder(), index, generator)
    plain = Recommender(catalog, HashEmbedder(), index)
    history = list(catalog.asins[30:34])
    for fields in ({"k": 5}, {"k": 5, "explain": True}):
        status, reply = handle_request(recommender, body(history=history, llm=False, **fields))
        expected = plain.recommend(history, k=5, explain=fields.get("explain", False)).to_dict()
        assert status == 200 and reply["items"] == json.loads(json.dumps(expected["items"]))
        assert reply["queries"] == [render_item(catalog.title(history[-1]))]  # last-item search, no LLM
    assert generator.histories == []  # the LLM never ran
    requests = [parse_request(body(history=history, llm=False), catalog), parse_request(body(history=history), catalog)]
    generator.enqueue([catalog.titles[1]])
    (status_a, reply_a), (status_b, reply_b) = run_batch(recommender, requests)
    assert status_a == status_b == 200 and len(generator.histories) == 1  # only the second ran the LLM
    assert reply_b["queries"] == [render_item(catalog.titles[1])]


def test_llm_true_without_an_llm_is_a_400(catalog: Catalog, item_vectors: np.ndarray):
    recommender = Recommender(catalog, HashEmbedder(), BruteForceIndex(item_vectors))
    status, reply = handle_request(recommender, body(history=[catalog.asins[0]], llm=True))
    assert status == 400 and "--llm" in reply["error"]
    status, reply = handle_request(recommender, body(history=[catalog.asins[0]], llm="yes"))
    assert status == 400 and "'llm' must be true or false" in reply["error"]


# --- the page's files ---


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            self.scripts.append(dict(attrs))
        if tag == "style" or "style" in names or any(name.startswith("on") for name in names):
            self.inline.append(tag)


def test_the_page_has_no_inline_script_or_style_and_its_script_builds_no_html():
    parser = _PageParser()
    parser.feed((STATIC_DIR / PAGE).read_text())
    assert parser.scripts == [{"src": "/static/app.js", "defer": None}]
    assert parser.inline == []
    script = (STATIC_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script.split("\n", 3)[3], sink  # past the header comment, which names innerHTML
    assert all((STATIC_DIR / name).is_file() for name in ASSETS)


def test_package_data_ships_the_static_files():
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"gloss.edge.server" = ["static/*"]' in pyproject


# --- over HTTP ---


def get(server, path: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection(HOST, server.server_address[1], timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def bundle_recommender(fusion_bundle: Path) -> Recommender:
    return Recommender.load(fusion_bundle, use_generator=False)


def test_page_assets_search_and_bundle_over_http(bundle_recommender: Recommender, fusion_bundle: Path):
    recommender = bundle_recommender
    with running(recommender, bundle_dir=fusion_bundle) as server:
        status, headers, page = get(server, "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert headers["Content-Security-Policy"] == CSP and "default-src 'self'" in CSP
        assert "unsafe-inline" not in CSP and headers["X-Content-Type-Options"] == "nosniff"
        assert page == (STATIC_DIR / PAGE).read_bytes()
        for name, media_type in ASSETS.items():
            status, headers, content = get(server, f"/static/{name}")
            assert status == 200 and headers["Content-Type"] == media_type
            assert content == (STATIC_DIR / name).read_bytes()
        for path in ("/static/nope.js", "/static/..%2Fapp.py", "/static/index.html"):
            status, headers, content = get(server, path)
            assert status == 404 and "error" in json.loads(content), path
        status, headers, content = get(server, "/search?q=shampoo&k=3")
        searcher = CatalogSearch(recommender.catalog, recommender.embedder, recommender.index)
        expected = json.loads(json.dumps(searcher.search(SearchRequest("shampoo", 3))))
        assert status == 200 and json.loads(content) == expected
        assert re.fullmatch(r"app;dur=[0-9.]+", headers["Server-Timing"])
        status, _, content = get(server, "/search?q=&k=3")
        assert status == 400 and "'q' is missing" in json.loads(content)["error"]
        status, _, content = get(server, "/bundle")
        facts = json.loads(content)
        assert status == 200 and facts == json.loads(json.dumps(bundle_facts(recommender, fusion_bundle)))
        assert facts["inspect"] == json.loads(json.dumps(inspect_bundle(fusion_bundle, verify=False).to_dict()))
        samples = parse_prometheus(get(server, "/metrics")[2].decode())
    for path, code, count in (("/", 200, 1), ("/static/app.js", 200, 1), ("/search", 200, 1), ("/search", 400, 1),
                              ("/bundle", 200, 1), ("other", 404, 3)):
        assert samples[f'gloss_requests_total{{path="{path}",status="{code}"}}'] == count, path


def test_bundle_facts_name_the_parts(bundle_recommender: Recommender, fusion_bundle: Path):
    facts = bundle_facts(bundle_recommender, fusion_bundle)
    manifest = json.loads((fusion_bundle / "gloss_bundle.json").read_text())
    assert facts["items"] == len(bundle_recommender.catalog) and facts["rule"] == "fusion"
    assert facts["catalog_version"] == manifest["catalog"].get("version", 1) and facts["name"] == "beauty"
    config = bundle_recommender.fusion.config
    assert facts["fusion_weights"] == {name: getattr(config, f"{name}_weight") for name in facts["fusion_weights"]}
    assert facts["llm"]["loaded"] is False and facts["generator"]["present"] is False
    assert facts["embedder"]["dim"] == bundle_recommender.embedder.dim
    bare = bundle_facts(bundle_recommender)  # without the folder: the loaded parts only
    assert bare["inspect"] is None and bare["items"] == facts["items"]


def test_search_answers_while_the_worker_is_busy(catalog: Catalog, item_vectors: np.ndarray):
    generator = GatedGenerator()
    recommender = Recommender(catalog, HashEmbedder(), BruteForceIndex(item_vectors), generator)
    with running(recommender) as server:
        hold(generator)
        result: list = []
        busy = threading.Thread(target=lambda: result.append(post(server, {"history": [catalog.asins[0]]})))
        busy.start()
        assert generator.entered.wait(10)  # the worker is inside the LLM now
        start = time.monotonic()
        status, _, content = get(server, "/search?q=shampoo")
        assert status == 200 and json.loads(content)["matches"] and time.monotonic() - start < 5
        generator.gate.set()
        busy.join(10)
    assert result[0][0] == 200


def test_searches_past_the_waiting_limit_get_503(catalog: Catalog, item_vectors: np.ndarray):
    recommender = Recommender(catalog, HashEmbedder(), BruteForceIndex(item_vectors))
    state = _Playground(RecommendService(recommender, ServeConfig()), None)
    release = threading.Event()
    state.searcher.search = lambda request: (release.wait(10), {"q": request.q})[1]

    async def flood() -> list[int]:
        tasks = [asyncio.create_task(state.search([("q", f"x{i}")])) for i in range(SEARCH_PENDING + 3)]
        await asyncio.sleep(0.2)
        release.set()
        return [response.status_code for response in await asyncio.gather(*tasks)]

    statuses = asyncio.run(flood())
    assert statuses.count(200) == SEARCH_PENDING and statuses.count(503) == 3
