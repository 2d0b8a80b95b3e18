// One feature: statistics, histogram, examples, names, scores, logit lens, families,
// splits and nearest features.
"use strict";

function histogram(h) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 460, H = 150, L = 40, B = 24;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "hist");
  svg.setAttribute("width", W); svg.setAttribute("height", H);
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  const n = h.counts.length, top = Math.max(1, ...h.counts);
  const bw = (W - L - 8) / n;
  function add(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e);
    return e;
  }
  h.counts.forEach((c, i) => {
    const bh = (H - B - 6) * c / top;
    const r = add("rect", {class: "bar", x: L + i * bw + 0.5, y: H - B - bh, width: Math.max(bw - 1, 1), height: bh});
    const t = document.createElementNS(NS, "title");
    t.textContent = fmt(h.edges[i], 3) + "–" + fmt(h.edges[i + 1], 3) + ": " + c.toLocaleString() + " rows";
    r.appendChild(t);
  });
  add("line", {x1: L, y1: H - B, x2: W - 8, y2: H - B});
  add("text", {x: L, y: H - 8}, "0");
  add("text", {x: W - 8, y: H - 8, "text-anchor": "end"}, fmt(h.edges[n], 3));
  add("text", {x: (L + W) / 2, y: H - 8, "text-anchor": "middle"}, "activation");
  add("text", {x: L - 4, y: 12, "text-anchor": "end"}, top.toLocaleString());
  add("text", {x: L - 4, y: H - B, "text-anchor": "end"}, "0");
  return svg;
}

function examples(v, list, withBin) {
  const t = el("table", "examples");
  for (const e of list) {
    const tr = el("tr");
    tr.appendChild(el("td", "act", fmt(e.act, 3)));
    if (withBin) tr.appendChild(el("td", "bin", "q" + e.bin));
    const td = el("td", "text");
    td.appendChild(exampleText(e, v.max_act));
    tr.appendChild(td);
    t.appendChild(tr);
  }
  return t;
}

(async function () {
  const here = route();
  await nav(here.run);
  const box = app();
  const f = Number(here.feature);
  let v;
  try {
    if (!/^-?\d+$/.test(String(here.feature))) throw new Error("feature id " + JSON.stringify(here.feature) + " is not a number");
    v = await api("/api/runs/" + encodeURIComponent(here.run) + "/features/" + f);
  } catch (e) { showError(box, e); return; }
  document.title = "saescope: " + here.run + " #" + f;

  const head = el("div", "fhead");
  head.appendChild(el("h2", null, "#" + v.feature));
  head.appendChild(el("span", "label", v.label || (v.dead ? "(dead feature)" : "(no name)")));
  const links = el("span", "links");
  if (v.feature > 0) links.appendChild(featureLink(v.run, v.feature - 1, "‹ #" + (v.feature - 1)));
  if (v.feature < v.d_sae - 1) links.appendChild(featureLink(v.run, v.feature + 1, "#" + (v.feature + 1) + " ›"));
  for (const [label, href] of [["steer search", runUrl(v.run, "/search?boost=" + v.feature)], ["steer generation", runUrl(v.run, "/generate?feature=" + v.feature)], ["all features", runUrl(v.run)]]) {
    const a = el("a", "flink", label); a.href = href; links.appendChild(a);
  }
  head.appendChild(links);
  box.appendChild(head);
  if (v.explanation) {
    const ex = el("div", "explanation", v.explanation);
    if (v.explanation_source) ex.title = v.explanation_source.method + " " + v.explanation_source.model;
    box.appendChild(ex);
  }

  const top = el("div", "summary");
  const stats = el("div", "box");
  stats.appendChild(el("h3", null, "Statistics"));
  const rows = v.dead ? [["active rows", "0 (dead: never fires on this run)"]] : [
    ["active rows", v.count.toLocaleString() + " of " + v.n_rows.toLocaleString()], ["density", pct(v.density)],
    ["log10 density", fmt(v.log10_density, 3)], ["max activation", fmt(v.max_act, 4)],
    ["mean active activation", fmt(v.mean_active_act, 4)], ["mean activation (all rows)", fmt(v.mean_act, 4)]];
  stats.appendChild(kv(rows));
  top.appendChild(stats);
  const hbox = el("div", "box"); hbox.id = "histogram";
  hbox.appendChild(el("h3", null, "Activation histogram (active rows)"));
  if (v.histogram) hbox.appendChild(histogram(v.histogram));
  else hbox.appendChild(el("div", "empty", v.dead ? "no activations" : v.histogram_status === "counting" ? "still being counted: reload in a moment" : "not available (" + v.histogram_status + ")"));
  top.appendChild(hbox);
  const names = el("div", "box");
  names.appendChild(el("h3", null, "Names and scores"));
  if (v.keywords.length) {
    const kw = el("div", "kwlist");
    v.keywords.forEach((w, i) => {
      const s = el("span", null, w);
      if (v.keyword_scores[i] !== undefined) s.appendChild(el("small", null, fmt(v.keyword_scores[i], 2)));
      kw.appendChild(s);
    });
    if (v.keyword_method) kw.appendChild(el("small", "stats", "(" + v.keyword_method + ")"));
    names.appendChild(kw);
  } else names.appendChild(el("div", "small", "no keywords (run `saescope keywords`)"));
  const sc = Object.entries(v.scores);
  if (sc.length) {
    names.appendChild(kv(sc.map(([name, s]) => [name + " score", fmt(s.score, 3) + ("shuffled_score" in s ? "   shuffled control " + fmt(s.shuffled_score, 3) : "")])));
  }
  top.appendChild(names);
  box.appendChild(top);

  if (v.logit_lens) {
    const s = section("Logit lens");
    const lens = el("div", "lens");
    for (const [side, label, pairs] of [["up", "promotes", v.logit_lens.promoted], ["down", "suppresses", v.logit_lens.suppressed]]) {
      const line = el("div", side);
      line.appendChild(el("span", "side", label));
      for (const [t, x] of pairs) { const sp = el("span", "t", visible(t)); sp.title = "logit " + fmt(x, 3); line.appendChild(sp); }
      lens.appendChild(line);
    }
    s.appendChild(lens);
    box.appendChild(s);
  }

  const ex = section("Top activations");
  ex.id = "top-examples";
  if (v.top.length) ex.appendChild(examples(v, v.top, false)); else ex.appendChild(el("div", "empty", "no examples"));
  box.appendChild(ex);
  if (v.quantiles.length) {
    const q = section("Across the activation range (q0 = the weakest quantile of active rows)");
    q.id = "quantile-examples";
    q.appendChild(examples(v, v.quantiles.slice().sort((a, b) => b.bin - a.bin || b.act - a.act), true));
    box.appendChild(q);
  }

  const rel = el("div", "cols");
  const near = section("Nearest features (decoder cosine)");
  near.id = "neighbours";
  const nt = el("table", "list");
  for (const n of v.neighbours) {
    const tr = el("tr");
    const a = el("td"); a.appendChild(featureLink(v.run, n.feature)); tr.appendChild(a);
    tr.appendChild(el("td", "num", fmt(n.cosine, 3)));
    tr.appendChild(el("td", "lab", n.label));
    tr.appendChild(el("td", "num", pct(n.density)));
    nt.appendChild(tr);
  }
  near.appendChild(nt);
  rel.appendChild(near);
  const fam = section("Families and splits");
  fam.id = "families";
  if (!v.families.length && !v.splits.length) fam.appendChild(el("div", "small", "in no family (or `saescope families` has not run on this cache)"));
  for (const r of v.families.slice().sort((a, b) => a.depth - b.depth)) {
    const d = el("div", "famrefs");
    const line = el("div");
    line.appendChild(document.createTextNode(r.depth === 0 ? "parent of a family of " + r.size + ": " : "depth " + r.depth + " in the family of "));
    if (r.depth !== 0) { line.appendChild(featureLink(v.run, r.parent)); line.appendChild(document.createTextNode(" (" + r.size + " features): ")); }
    line.appendChild(el("span", "kw", r.name || r.parent_label || "(unnamed)"));
    d.appendChild(line);
    const fams = el("div", "small");
    if (r.tree_parent !== null) { fams.appendChild(document.createTextNode("under ")); fams.appendChild(featureLink(v.run, r.tree_parent)); fams.appendChild(document.createTextNode(" ")); }
    if (r.children.length) {
      fams.appendChild(document.createTextNode("children: "));
      r.children.forEach(c => { fams.appendChild(featureLink(v.run, c)); fams.appendChild(document.createTextNode(" ")); });
    }
    const browse = el("a", "flink", "browse the family"); browse.href = runUrl(v.run, "?family=" + r.family);
    fams.appendChild(browse);
    d.appendChild(fams);
    fam.appendChild(d);
  }
  for (const s of v.splits) {
    const rows = s.relation === "splits into" ? "fires on " + pct(s.share) + " of this feature's rows" : "this feature fires on " + pct(s.share) + " of its rows";
    fam.appendChild(el("div", "small", s.relation + " #" + s.feature + " of " + s.sae + " (d_sae " + s.d_sae + "): cosine " + fmt(s.cosine, 3) + ", " + rows));
  }
  rel.appendChild(fam);
  box.appendChild(rel);
})();
