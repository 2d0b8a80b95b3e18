"""The report page's HTML, CSS and JavaScript, kept as strings so they ship inside the wheel.

The page loads nothing from the network: styles and script are inlined, plots are
local PNG files beside index.html, and the data is a JSON blob in a
`<script type="application/json">` element. The script renders the feature list
from that blob; cards show whatever annotations the blob carries (keywords,
explanation, scores), so later stages only need to add fields to it.

Token runs add `DATA.tokens[row] = {tokens, pos}` (a row's context window and the
index of its own token), and per feature `tok_acts[row] = [[i, act], ...]` (the
feature's non-zero activations on the window's tokens) and the logit lens
(`promoted`, `suppressed`: [token, logit] pairs). Families add `DATA.families`
(the largest trees, each node [feature, [children...]]) and per feature `families`
([family, depth] pairs) and `splits`; a tree is drawn only when it is opened.
Every text reaches the page through `textContent`, never as markup.
"""

CSS = r"""
:root { --fg:#1d2330; --muted:#5b6475; --line:#dde2ea; --bg:#f6f7f9; --card:#fff; --accent:#2f5d9a; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
header { background:#20324f; color:#fff; padding:14px 24px; }
header h1 { margin:0; font-size:20px; font-weight:600; }
header .sub { color:#c9d4e6; font-size:13px; margin-top:2px; }
main { max-width:1180px; margin:0 auto; padding:16px 24px 48px; }
section { margin-bottom:22px; }
h2 { font-size:16px; margin:18px 0 8px; }
.summary { display:grid; grid-template-columns:repeat(auto-fit, minmax(260px, 1fr)); gap:12px; }
.box { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
.box h3 { margin:0 0 6px; font-size:13px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
.kv { display:grid; grid-template-columns:max-content 1fr; gap:2px 12px; font-size:13px; }
.kv .k { color:var(--muted); }
.kv .v { font-variant-numeric:tabular-nums; overflow-wrap:anywhere; }
.plots { display:flex; flex-wrap:wrap; gap:12px; }
.plots figure { margin:0; background:var(--card); border:1px solid var(--line); border-radius:8px; padding:6px; flex:1 1 400px; max-width:560px; }
.plots img { max-width:100%; height:auto; display:block; }
.plots figure.wide { flex-basis:100%; max-width:none; }
.plots figure.wide img { max-width:900px; }
.controls { display:flex; gap:10px; align-items:center; flex-wrap:wrap; margin:8px 0 10px; }
.controls input[type=search] { flex:1 1 320px; padding:7px 10px; font-size:14px; border:1px solid #c3cad6; border-radius:6px; }
.controls select { padding:6px 8px; font-size:14px; border:1px solid #c3cad6; border-radius:6px; background:#fff; }
#count { color:var(--muted); font-size:13px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; margin-bottom:6px; }
.card-head { display:flex; gap:12px; align-items:baseline; padding:8px 12px; cursor:pointer; user-select:none; }
.card-head:hover { background:#f1f4f9; }
.fid { font-weight:600; color:var(--accent); min-width:64px; font-variant-numeric:tabular-nums; }
.title { flex:1; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
.title .kw { color:#7a4b12; }
.title .ex { color:var(--muted); }
.stats { color:var(--muted); font-size:12px; white-space:nowrap; font-variant-numeric:tabular-nums; }
.badge { display:inline-block; padding:0 6px; margin-left:6px; border-radius:9px; background:#e7eefb; color:#244a80; font-size:12px; }
.card-body { display:none; padding:4px 14px 12px; border-top:1px solid var(--line); }
.card.open .card-body { display:block; }
.card.open .card-head { background:#eef3fb; }
.explanation { margin:8px 0; font-style:italic; }
.kwlist span { display:inline-block; margin:2px 6px 2px 0; padding:1px 7px; border-radius:10px; background:#fbf0df; color:#6b3f08; font-size:12px; }
.kwlist span small { color:#a07a48; margin-left:4px; }
table.examples { width:100%; border-collapse:collapse; margin-top:4px; }
table.examples td { padding:3px 6px; vertical-align:top; border-bottom:1px solid #eef0f4; }
table.examples td.act { width:64px; text-align:right; font-variant-numeric:tabular-nums; color:var(--muted); }
table.examples td.bin { width:44px; color:var(--muted); font-size:12px; }
.span { border-radius:3px; padding:1px 2px; }
.tok { border-radius:2px; white-space:pre-wrap; }
.tok.at { box-shadow:inset 0 -2px 0 #b3500c; }
.lens { margin:6px 0; font-size:12px; }
.lens .side { color:var(--muted); margin-right:6px; }
.lens span.t { display:inline-block; margin:2px 4px 2px 0; padding:0 5px; border-radius:4px; font-family:ui-monospace, monospace; white-space:pre; }
.lens .up span.t { background:#e3f1e3; color:#1f5a1f; }
.lens .down span.t { background:#f8e3e3; color:#7a1f1f; }
h4 { margin:12px 0 2px; font-size:13px; color:var(--muted); }
button.more { margin:8px 0; padding:6px 14px; border:1px solid #c3cad6; background:#fff; border-radius:6px; cursor:pointer; }
.empty { color:var(--muted); padding:12px; }
details.family { background:var(--card); border:1px solid var(--line); border-radius:8px; margin-bottom:4px; }
details.family > summary { display:flex; gap:12px; align-items:baseline; padding:6px 12px; cursor:pointer; }
details.family > summary .title { flex:1; }
ul.tree { list-style:none; margin:0; padding:0 0 0 18px; border-left:1px dotted #c3cad6; }
details.family > ul.tree { margin:2px 12px 8px; }
ul.tree li { margin:1px 0; }
ul.tree .kw { color:#7a4b12; font-size:13px; }
a.flink { color:var(--accent); text-decoration:none; font-variant-numeric:tabular-nums; }
a.flink:hover { text-decoration:underline; }
.famrefs div { margin:2px 0; font-size:13px; }
"""

JS = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("report-data").textContent);
const PAGE = 150;
let shown = PAGE;
let view = [];

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function fmt(x, digits) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Number(x).toPrecision(digits || 3);
}
function pct(x) { return (100 * x).toPrecision(3) + "%"; }

function tokensOf(row) { return DATA.tokens ? DATA.tokens[String(row)] : undefined; }

function textOf(row) {
  const tok = tokensOf(row);
  if (tok) return tok.tokens.join("");
  const t = DATA.texts[String(row)];
  return t === undefined ? "(row " + row + ")" : t;
}

const FAMILIES = DATA.families || [];
const FAMBYID = new Map(FAMILIES.map(x => [x.id, x]));
const BYID = new Map(DATA.features.map(f => [f.id, f]));
const FAM_PAGE = 40;
let famShown = FAM_PAGE;

for (const f of DATA.features) {
  const tops = (f.top || []).slice(0, 3).map(e => textOf(e[0]));
  const famNames = (f.families || []).map(p => (FAMBYID.get(p[0]) || {}).name || "");
  const lens = (f.promoted || []).map(p => p[0]);
  f._search = ["#" + f.id, String(f.id), (f.keywords || []).join(" "), f.explanation || "", tops.join(" "), lens.join(" "), famNames.join(" ")]
    .join(" \u0001 ").toLowerCase();
}

function visible(t) { return t.replace(/\n/g, "\u21b5"); }

// A card's one-line title: a text, or the tokens just before a token row's token and it.
function titleOf(row) {
  const tok = tokensOf(row);
  if (!tok) return el("span", "ex", textOf(row));
  const wrap = el("span", "ex");
  wrap.appendChild(document.createTextNode(visible(tok.tokens.slice(Math.max(0, tok.pos - 10), tok.pos).join(""))));
  wrap.appendChild(el("b", null, visible(tok.tokens[tok.pos])));
  wrap.appendChild(document.createTextNode(visible(tok.tokens.slice(tok.pos + 1, tok.pos + 3).join(""))));
  return wrap;
}

function alpha(act, maxAct) { return maxAct > 0 ? Math.max(0, Math.min(1, act / maxAct)) : 0; }

// Highlight the active span. Sentence embeddings: the whole text is the span, shaded by
// activation / the feature's max. Token runs: every token of the window is coloured by
// the feature's activation on it (alpha = act / max_act), the row's own token underlined.
function exampleText(row, act, maxAct, tokActs) {
  const shade = "rgba(255, 150, 30, " + (0.08 + 0.55 * alpha(act, maxAct)).toFixed(3) + ")";
  const tok = tokensOf(row);
  const wrap = el("span");
  if (tok) {
    const acts = new Map((tokActs || []).map(p => [p[0], p[1]]));
    tok.tokens.forEach((t, i) => {
      const s = el("span", i === tok.pos ? "tok at" : "tok", visible(t));
      const a = acts.get(i) || 0;
      if (a > 0) {
        s.style.background = "rgba(255, 150, 30, " + alpha(a, maxAct).toFixed(3) + ")";
        s.title = "activation " + fmt(a, 4);
      }
      wrap.appendChild(s);
    });
    return wrap;
  }
  const s = el("span", "span", textOf(row));
  s.style.background = shade;
  s.title = "activation " + fmt(act, 4);
  wrap.appendChild(s);
  return wrap;
}

function exampleTable(examples, maxAct, withBin, tokActs) {
  const table = el("table", "examples");
  for (const e of examples) {
    const tr = el("tr");
    tr.appendChild(el("td", "act", fmt(e[1], 3)));
    if (withBin) tr.appendChild(el("td", "bin", "q" + e[2]));
    const td = el("td", "text");
    td.appendChild(exampleText(e[0], e[1], maxAct, (tokActs || {})[String(e[0])]));
    tr.appendChild(td);
    table.appendChild(tr);
  }
  return table;
}

// A feature's short label: its first keywords, or its explanation.
function labelOf(id) {
  const f = BYID.get(id);
  if (!f) return "";
  return f.keywords && f.keywords.length ? f.keywords.slice(0, 3).join(", ") : (f.explanation || "");
}

// Show one feature's card alone, opened (a search for "#id" matches that id exactly).
function showFeature(id) {
  document.getElementById("search").value = "#" + id;
  update();
  const c = document.querySelector('.card[data-feature="' + id + '"]');
  if (!c) return;
  if (!c.classList.contains("open")) c.querySelector(".card-head").click();
  c.scrollIntoView({block: "start"});
}

function featureLink(id) {
  const a = el("a", "flink", "#" + id);
  a.href = "#";
  a.title = BYID.has(id) ? "show this feature" : "not among the features listed";
  a.addEventListener("click", e => { e.preventDefault(); showFeature(id); });
  return a;
}

function treeItem(node) {
  const li = el("li");
  li.appendChild(featureLink(node[0]));
  const label = labelOf(node[0]);
  if (label) li.appendChild(el("span", "kw", "  " + label));
  if (node[1].length) {
    const ul = el("ul", "tree");
    for (const child of node[1]) ul.appendChild(treeItem(child));
    li.appendChild(ul);
  }
  return li;
}

function familyTitle(fam) { return fam.name || labelOf(fam.tree[0]) || "(unnamed)"; }

// Open a family's tree in the Families section and bring it into view.
function showFamily(id) {
  const index = FAMILIES.findIndex(x => x.id === id);
  if (index >= famShown) { famShown = index + 1; renderFamilies(); }
  const d = document.querySelector('details.family[data-family="' + id + '"]');
  if (!d) return;
  d.open = true;
  d.scrollIntoView({block: "start"});
}

function renderFamilies() {
  const box = document.getElementById("families");
  box.replaceChildren();
  for (const fam of FAMILIES.slice(0, famShown)) {
    const d = el("details", "family");
    d.dataset.family = fam.id;
    const s = el("summary");
    s.appendChild(el("span", "fid", "#" + fam.tree[0]));
    s.appendChild(el("span", "title", familyTitle(fam)));
    s.appendChild(el("span", "stats", fam.size + " features · depth " + fam.depth));
    d.appendChild(s);
    d.addEventListener("toggle", () => {
      if (d.open && d.children.length === 1) {
        const ul = el("ul", "tree");
        ul.appendChild(treeItem(fam.tree));
        d.appendChild(ul);
      }
    });
    box.appendChild(d);
  }
  document.getElementById("more-families").style.display = FAMILIES.length > famShown ? "" : "none";
}

function familyRefs(f, body) {
  if (f.families && f.families.length) {
    body.appendChild(el("h4", null, "Families"));
    const box = el("div", "famrefs");
    for (const [id, depth] of f.families.slice().sort((a, b) => b[1] - a[1])) {
      const fam = FAMBYID.get(id);
      const line = el("div");
      if (!fam) {
        line.textContent = "in family " + id + " (not among the " + FAMILIES.length + " largest drawn)";
      } else {
        line.appendChild(document.createTextNode(depth === 0 ? "parent of " : "depth " + depth + " in "));
        const a = el("a", "flink", "the family of #" + fam.tree[0]);
        a.href = "#";
        a.addEventListener("click", e => { e.preventDefault(); showFamily(id); });
        line.appendChild(a);
        line.appendChild(document.createTextNode(" (" + fam.size + " features): " + familyTitle(fam)));
      }
      box.appendChild(line);
    }
    body.appendChild(box);
  }
  if (f.splits && f.splits.length) {
    body.appendChild(el("h4", null, "Across SAE widths"));
    const box = el("div", "famrefs");
    for (const [sae, relation, other, cos, share, inside, d] of f.splits) {
      const rows = relation === "splits into" ? "fires on " + pct(share) + " of this feature's rows"
        : "this feature fires on " + pct(share) + " of its rows";
      box.appendChild(el("div", null, relation + " #" + other + " of " + sae + " (d_sae " + d + "): cosine " + fmt(cos, 3) + ", " + rows));
    }
    body.appendChild(box);
  }
}

function renderBody(f, body) {
  if (f.explanation) body.appendChild(el("div", "explanation", f.explanation));
  if (f.keywords && f.keywords.length) {
    const kw = el("div", "kwlist");
    f.keywords.forEach((w, i) => {
      const s = el("span", null, w);
      if (f.kw_scores && f.kw_scores[i] !== undefined) s.appendChild(el("small", null, fmt(f.kw_scores[i], 2)));
      kw.appendChild(s);
    });
    if (f.kw_method) kw.appendChild(el("small", "stats", "(" + f.kw_method + ")"));
    body.appendChild(kw);
  }
  const kv = el("div", "kv");
  const rows = [["active rows", f.count.toLocaleString()], ["density", pct(f.density)],
    ["max activation", fmt(f.max_act, 4)], ["mean active activation", fmt(f.mean_active_act, 4)]];
  for (const [name, s] of Object.entries(f.scores || {})) {
    rows.push([name + " score", fmt(s.score, 3) + ("shuffled_score" in s ? "  (shuffled " + fmt(s.shuffled_score, 3) + ")" : "")]);
  }
  for (const [k, v] of rows) { kv.appendChild(el("div", "k", k)); kv.appendChild(el("div", "v", v)); }
  body.appendChild(kv);
  familyRefs(f, body);
  if (f.promoted) {
    const lens = el("div", "lens");
    for (const [side, label, pairs] of [["up", "promotes", f.promoted], ["down", "suppresses", f.suppressed || []]]) {
      const line = el("div", side);
      line.appendChild(el("span", "side", label));
      for (const [t, x] of pairs) {
        const s = el("span", "t", visible(t));
        s.title = "logit " + fmt(x, 3);
        line.appendChild(s);
      }
      lens.appendChild(line);
    }
    body.appendChild(lens);
  }
  body.appendChild(el("h4", null, "Top activations"));
  body.appendChild(exampleTable(f.top || [], f.max_act, false, f.tok_acts));
  if (f.quant && f.quant.length) {
    body.appendChild(el("h4", null, "Examples across the activation range (q0 = weakest)"));
    const q = f.quant.slice().sort((a, b) => b[2] - a[2] || b[1] - a[1]);
    body.appendChild(exampleTable(q, f.max_act, true, f.tok_acts));
  }
}

function card(f) {
  const c = el("div", "card");
  c.dataset.feature = f.id;
  const head = el("div", "card-head");
  head.appendChild(el("span", "fid", "#" + f.id));
  const title = el("span", "title");
  if (f.keywords && f.keywords.length) title.appendChild(el("span", "kw", f.keywords.slice(0, 6).join(", ") + "  "));
  if (f.explanation) title.appendChild(el("span", null, f.explanation + "  "));
  if (f.top && f.top.length) title.appendChild(titleOf(f.top[0][0]));
  head.appendChild(title);
  const stats = el("span", "stats", "density " + pct(f.density) + " · max " + fmt(f.max_act, 3));
  for (const [name, s] of Object.entries(f.scores || {})) stats.appendChild(el("span", "badge", name + " " + fmt(s.score, 2)));
  head.appendChild(stats);
  const body = el("div", "card-body");
  head.addEventListener("click", () => {
    if (!body.hasChildNodes()) renderBody(f, body);
    c.classList.toggle("open");
  });
  c.appendChild(head);
  c.appendChild(body);
  return c;
}

function sortKey(f, key) {
  if (key === "id") return f.id;
  if (key.startsWith("score:")) {
    const s = (f.scores || {})[key.slice(6)];
    return s ? s.score : -Infinity;
  }
  return f[key];
}

function update() {
  const q = document.getElementById("search").value.trim().toLowerCase();
  const [key, dir] = document.getElementById("sort").value.split("|");
  const terms = q ? q.split(/\s+/) : [];
  // "#12" is feature 12 exactly; any other term is a substring of what a card shows
  const matches = (f, t) => /^#\d+$/.test(t) ? String(f.id) === t.slice(1) : f._search.includes(t);
  view = DATA.features.filter(f => terms.every(t => matches(f, t)));
  const sign = dir === "asc" ? 1 : -1;
  view.sort((a, b) => sign * (sortKey(a, key) - sortKey(b, key)) || a.id - b.id);
  shown = PAGE;
  render();
}

function render() {
  const list = document.getElementById("features");
  list.replaceChildren();
  for (const f of view.slice(0, shown)) list.appendChild(card(f));
  if (!view.length) list.appendChild(el("div", "empty", "No feature matches."));
  document.getElementById("count").textContent =
    view.length + " of " + DATA.features.length + " features" + (view.length > shown ? " (showing " + shown + ")" : "");
  const more = document.getElementById("more");
  more.style.display = view.length > shown ? "" : "none";
}

function setup() {
  const sort = document.getElementById("sort");
  const options = [["density|desc", "density (high first)"], ["density|asc", "density (low first)"],
    ["max_act|desc", "max activation"], ["count|desc", "active rows"], ["id|asc", "feature id"]];
  for (const s of DATA.scorers) options.push(["score:" + s + "|desc", s + " score"]);
  for (const [v, label] of options) { const o = el("option", null, label); o.value = v; sort.appendChild(o); }
  document.getElementById("search").addEventListener("input", update);
  sort.addEventListener("change", update);
  document.getElementById("more").addEventListener("click", () => { shown += PAGE; render(); });
  if (FAMILIES.length) {
    document.getElementById("families-section").hidden = false;
    document.getElementById("more-families").addEventListener("click", () => { famShown += FAM_PAGE; renderFamilies(); });
    renderFamilies();
  }
  update();
}
setup();
"""

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>__CSS__</style>
</head>
<body>
<header><h1>__TITLE__</h1><div class="sub">__SUBTITLE__</div></header>
<main>
<section><h2>Run</h2><div class="summary">__SUMMARY__</div></section>
<section><h2>Plots</h2><div class="plots">__PLOTS__</div></section>
<section id="families-section" hidden>
<h2>Families</h2>
<div id="families"></div>
<button id="more-families" class="more" type="button">show more families</button>
</section>
<section>
<h2>Features</h2>
<div class="controls">
<input id="search" type="search" placeholder="Search: feature id, keywords, explanation or top texts" autocomplete="off">
<label>sort by <select id="sort"></select></label>
<span id="count"></span>
</div>
<div id="features"></div>
<button id="more" class="more" type="button">show more</button>
</section>
</main>
<script id="report-data" type="application/json">__DATA__</script>
<script>__JS__</script>
</body>
</html>
"""
