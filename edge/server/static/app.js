// GLoSS playground: search the catalogue, build a history, see recommendations and why.
// Catalogue text is data: every string from the server goes into the page through textContent (el() below),
// never innerHTML, and the page's Content-Security-Policy allows no inline script.
"use strict";

const SEARCH_DELAY_MS = 150;
const RECOMMEND_DELAY_MS = 100;
const MIN_QUERY_CHARS = 2;
const MAX_QUERY_CHARS = 200;
const MAX_K = 50;
// What each part of a fusion (or paper-rule) score means, and how its source reads.
const PARTS = {
  text: { name: "text", means: "like your recent items", source: "like" },
  copurchase: { name: "co-purchase", means: "bought after your recent items", source: "bought after" },
  popularity: { name: "popularity", means: "bought by many users", source: null },
  query: { name: "query", means: "like a generated (or query) title", source: "like" },
  beam: { name: "beam", means: "the LLM's beams land on it", source: "beam" },
  coldstart: { name: "cold start", means: "new item (no purchases yet), like", source: "like" },
  unexplained: { name: "other", means: "not split into parts", source: null },
};

const state = { basket: [], facts: null, searchSeq: 0, recSeq: 0, searchTimer: null, recTimer: null };
const $ = (id) => document.getElementById(id);

function el(tag, options = {}, children = []) {
  const node = document.createElement(tag);
  if (options.cls) node.className = options.cls;
  if (options.text !== undefined) node.textContent = String(options.text);
  for (const [name, value] of Object.entries(options.attrs || {})) node.setAttribute(name, String(value));
  for (const child of children) if (child) node.append(child);
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

async function getJSON(url, init) {
  const started = performance.now();
  const response = await fetch(url, init);
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = { error: `not JSON (HTTP ${response.status})` };
  }
  const timing = /dur=([0-9.]+)/.exec(response.headers.get("Server-Timing") || "");
  return {
    ok: response.ok, status: response.status, body,
    serverMs: timing ? Number(timing[1]) : null, roundTripMs: performance.now() - started,
  };
}

// --- bundle facts ---

function describeFacts(facts) {
  const parts = [facts.name || "bundle", `${facts.items.toLocaleString("en")} items`];
  if (facts.catalog_version !== null) parts.push(`catalogue v${facts.catalog_version}`);
  parts.push(`rule: ${facts.rule}`);
  parts.push(facts.llm.loaded ? "LLM loaded" : "LLM not loaded");
  return parts.join(" \u00b7 ");
}

function factRows(facts) {
  const rows = [["items", facts.items.toLocaleString("en")], ["catalogue version", facts.catalog_version ?? "?"]];
  const emb = facts.embedder;
  rows.push(["embedder", [emb.source, `${emb.dim}-d`, emb.int8 ? "int8" : emb.int8 === false ? "fp32" : null]
    .filter(Boolean).join(", ")]);
  rows.push(["index", [facts.index.dtype, `${facts.index.items.toLocaleString("en")} vectors`].filter(Boolean).join(", ")]);
  const gen = facts.generator;
  const genText = gen.present ? [gen.name || "GGUF", gen.bytes ? `${(gen.bytes / 2 ** 20).toFixed(0)} MiB` : null]
    .filter(Boolean).join(", ") : "none";
  rows.push(["generator", `${genText}; ${facts.llm.loaded ? "loaded (serve --llm or its default)" : "not loaded"}`]);
  rows.push(["ranking", `${facts.rule}${facts.exclude_seen ? ", history items removed" : ""}`]);
  if (facts.fusion_weights) {
    rows.push(["fusion weights", Object.entries(facts.fusion_weights).map(([k, v]) => `${k} ${v}`).join(", ")]);
  }
  return rows;
}

function showFacts(facts) {
  state.facts = facts;
  $("facts-line").textContent = describeFacts(facts);
  const list = $("facts");
  clear(list);
  for (const [name, value] of factRows(facts)) {
    list.append(el("dt", { text: name }), el("dd", { text: value }));
  }
  const llm = $("llm");
  llm.disabled = !facts.llm.loaded;
  llm.checked = facts.llm.loaded;
  const note = facts.llm.loaded
    ? "The LLM writes titles for every answer; untick to answer without its beam search (faster)."
    : facts.generator.present
      ? "The server runs without the bundle's LLM (its fusion weights give it no say); gloss-edge serve --llm loads it."
      : "This bundle has no generator (LLM): recommendations come from the history alone.";
  $("llm-label").title = note;
  $("llm-note").textContent = note;
}

async function loadFacts() {
  const reply = await getJSON("/bundle");
  if (reply.ok) showFacts(reply.body);
  else $("facts-line").textContent = `bundle facts unavailable: ${reply.body.error}`;
}

// --- search ---

function resultItem(item) {
  const inBasket = state.basket.some((b) => b.asin === item.asin);
  const button = el("button", { cls: "result", attrs: { type: "button", "data-asin": item.asin } }, [
    el("span", { cls: "title", text: item.title }),
    el("span", { cls: "meta", text: item.score !== undefined ? `${item.asin} \u00b7 ${item.score.toFixed(2)}` : item.asin }),
  ]);
  button.disabled = inBasket;
  button.addEventListener("click", () => addToBasket(item));
  return el("li", {}, [button]);
}

function showResults(reply) {
  const { matches, similar, num_matches: total } = reply;
  for (const [id, items] of [["matches", matches], ["similar", similar]]) {
    const list = $(id);
    clear(list);
    items.forEach((item) => list.append(resultItem(item)));
    $(`${id}-title`).hidden = items.length === 0;
  }
  const more = total > matches.length ? ` (first ${matches.length} shown)` : "";
  const titles = total === 1 ? "1 title contains" : `${total} titles contain`;
  $("search-status").textContent = `${titles} \u201c${reply.q}\u201d${more}`;
}

function scheduleSearch() {
  clearTimeout(state.searchTimer);
  state.searchTimer = setTimeout(runSearch, SEARCH_DELAY_MS);
}

async function runSearch() {
  const q = $("q").value.trim().slice(0, MAX_QUERY_CHARS);
  const seq = ++state.searchSeq;
  if (q.length < MIN_QUERY_CHARS) {
    showResults({ q, matches: [], similar: [], num_matches: 0 });
    $("search-status").textContent = q ? "Type at least two characters." : "";
    return;
  }
  const reply = await getJSON(`/search?${new URLSearchParams({ q, k: "8" })}`);
  if (seq !== state.searchSeq) return; // a newer search was sent
  if (reply.ok) showResults(reply.body);
  else $("search-status").textContent = `search failed: ${reply.body.error}`;
}

// --- history basket ---

function addToBasket(item) {
  if (state.basket.some((b) => b.asin === item.asin)) return;
  state.basket.push({ asin: item.asin, title: item.title });
  basketChanged();
}

function move(index, step) {
  const target = index + step;
  if (target < 0 || target >= state.basket.length) return;
  [state.basket[index], state.basket[target]] = [state.basket[target], state.basket[index]];
  basketChanged();
}

function removeAt(index) {
  state.basket.splice(index, 1);
  basketChanged();
}

function iconButton(label, text, onClick, disabled) {
  const button = el("button", { cls: "icon", text, attrs: { type: "button", "aria-label": label, title: label } });
  button.disabled = disabled;
  button.addEventListener("click", onClick);
  return button;
}

function renderBasket() {
  const list = $("basket");
  clear(list);
  state.basket.forEach((item, i) => {
    list.append(el("li", { cls: "basket-item", attrs: { "data-asin": item.asin } }, [
      el("span", { cls: "title", text: item.title }),
      el("span", { cls: "meta", text: item.asin }),
      el("span", { cls: "actions" }, [
        iconButton("move up (older)", "\u2191", () => move(i, -1), i === 0),
        iconButton("move down (newer)", "\u2193", () => move(i, 1), i === state.basket.length - 1),
        iconButton("remove", "\u2715", () => removeAt(i), false),
      ]),
    ]));
  });
  $("basket-empty").hidden = state.basket.length > 0;
  for (const button of document.querySelectorAll("button.result")) {
    button.disabled = state.basket.some((b) => b.asin === button.dataset.asin);
  }
}

function basketChanged() {
  renderBasket();
  scheduleRecommend();
}

// --- recommendations ---

function scheduleRecommend() {
  clearTimeout(state.recTimer);
  state.recTimer = setTimeout(runRecommend, RECOMMEND_DELAY_MS);
}

function readK() {
  const k = Math.round(Number($("k").value));
  return Number.isFinite(k) ? Math.min(Math.max(k, 1), MAX_K) : 10;
}

function llmAsked() {
  return Boolean(state.facts && state.facts.llm.loaded && $("llm").checked);
}

async function runRecommend() {
  const seq = ++state.recSeq;
  if (state.basket.length === 0) {
    clear($("items"));
    clear($("legend"));
    $("queries").hidden = true;
    $("rec-status").textContent = "Add at least one item to the history.";
    return;
  }
  const body = { history: state.basket.map((b) => b.asin), k: readK(), include_seen: false, explain: true };
  if (state.facts && state.facts.llm.loaded && !$("llm").checked) body.llm = false;
  $("rec-status").textContent = "asking the server\u2026";
  const reply = await getJSON("/recommend", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (seq !== state.recSeq) return;
  if (!reply.ok) {
    $("rec-status").textContent = `recommendation failed (${reply.status}): ${reply.body.error}`;
    return;
  }
  showRecommendations(reply);
  $("items").dataset.history = body.history.join(" "); // which history the list answers (tests wait on it)
}

function partLabel(name) {
  return (PARTS[name] || { name }).name;
}

function sourceText(name, explanation) {
  const source = explanation.sources ? explanation.sources[name] : undefined;
  const part = PARTS[name];
  if (!source) return part ? part.means : "";
  return `${part && part.source ? part.source : "from"} \u201c${source}\u201d`;
}

function scoreBar(explanation, scale) {
  const bar = el("div", { cls: "bar", attrs: { role: "img" } });
  const described = [];
  for (const [name, value] of Object.entries(explanation.parts)) {
    if (!(value > 0)) continue;
    const seg = el("span", { cls: `seg part-${PARTS[name] ? name : "unexplained"}` });
    seg.style.width = `${Math.max((100 * value) / scale, 0.4)}%`;
    seg.title = `${partLabel(name)} ${value.toFixed(3)}: ${sourceText(name, explanation)}`;
    bar.append(seg);
    described.push(`${partLabel(name)} ${value.toFixed(3)}`);
  }
  bar.setAttribute("aria-label", `score parts: ${described.join(", ") || "none above 0"}`);
  return bar;
}

function whyList(explanation) {
  const list = el("ul", { cls: "why" });
  const parts = Object.entries(explanation.parts).filter(([, v]) => v !== 0).sort((a, b) => b[1] - a[1]);
  for (const [name, value] of parts) {
    list.append(el("li", {}, [
      el("span", { cls: `swatch part-${PARTS[name] ? name : "unexplained"}` }),
      el("span", { cls: "part-name", text: `${partLabel(name)} ${value.toFixed(3)}` }),
      el("span", { cls: "part-source", text: sourceText(name, explanation) }),
    ]));
  }
  return list;
}

function showLegend(items) {
  const legend = $("legend");
  clear(legend);
  const used = new Set();
  items.forEach((item) => Object.entries(item.explanation ? item.explanation.parts : {})
    .forEach(([name, value]) => { if (value > 0) used.add(PARTS[name] ? name : "unexplained"); }));
  for (const name of Object.keys(PARTS).filter((n) => used.has(n))) {
    legend.append(el("span", { cls: "legend-item" }, [
      el("span", { cls: `swatch part-${name}` }), el("span", { text: `${PARTS[name].name}: ${PARTS[name].means}` }),
    ]));
  }
}

function showRecommendations(reply) {
  const { items, queries } = reply.body;
  const list = $("items");
  clear(list);
  const scale = Math.max(1e-9, ...items.map((item) => Object.values(item.explanation ? item.explanation.parts : {})
    .reduce((sum, v) => sum + Math.max(v, 0), 0)));
  items.forEach((item, i) => {
    list.append(el("li", { cls: "item", attrs: { "data-asin": item.asin } }, [
      el("div", { cls: "item-head" }, [
        el("span", { cls: "rank", text: i + 1 }),
        el("span", { cls: "title", text: item.title }),
        el("span", { cls: "score", text: item.score.toFixed(3) }),
      ]),
      el("div", { cls: "meta", text: item.asin }),
      item.explanation ? scoreBar(item.explanation, scale) : null,
      item.explanation ? whyList(item.explanation) : null,
    ]));
  });
  showLegend(items);
  showQueries(queries || [], reply.body.query_items || []);
  const server = reply.serverMs !== null ? `${reply.serverMs.toFixed(1)} ms on the server, ` : "";
  const dropped = reply.body.history_dropped ? `; the oldest ${reply.body.history_dropped} history items were dropped` : "";
  $("rec-status").textContent = `${items.length} items in ${server}${reply.roundTripMs.toFixed(0)} ms round trip${dropped}`;
}

function showQueries(queries, queryItems) {
  const box = $("queries");
  const list = $("query-list");
  clear(list);
  const llmRan = llmAsked() && queries.length > 0;
  box.hidden = queries.length === 0 && !(state.facts && state.facts.rule === "fusion");
  if (queries.length === 0) {
    $("queries-title").textContent = "Generated titles";
    const facts = state.facts || { llm: { loaded: false }, generator: { present: false } };
    list.append(el("li", { cls: "muted", text: facts.llm.loaded
      ? "The LLM did not run for this answer (switch above)."
      : facts.generator.present
        ? "The LLM did not run: fusion ranks from the history alone (gloss-edge serve --llm runs it)."
        : "No LLM in this bundle: fusion ranks from the history alone." }));
    return;
  }
  $("queries-title").textContent = llmRan ? "Generated titles (the LLM's beams)" : "Query (no LLM: the last item's title)";
  queries.forEach((query, i) => {
    const title = query.replace(/^Title: /, "");
    const asin = queryItems[i];
    const badge = llmRan ? el("span", { cls: asin ? "badge exact" : "badge free",
      text: asin ? `\u2713 catalogue title ${asin}` : "\u2717 not a catalogue title" }) : null;
    list.append(el("li", { cls: "query" }, [el("span", { cls: "title", text: title }), badge]));
  });
}

// --- wiring ---

function start() {
  $("q").addEventListener("input", scheduleSearch);
  $("k").addEventListener("change", scheduleRecommend);
  $("llm").addEventListener("change", scheduleRecommend);
  $("clear").addEventListener("click", () => { state.basket = []; basketChanged(); });
  loadFacts();
  renderBasket();
}

start();
