// The feature browser: search, filters, sort and pages, kept in the address bar.
"use strict";
(async function () {
  const here = route();
  await nav(here.run);
  const box = app();
  let info;
  try { info = await api("/api/runs/" + encodeURIComponent(here.run)); } catch (e) { showError(box, e); return; }
  const head = el("div", "fhead");
  head.appendChild(el("h2", null, info.id));
  head.appendChild(el("span", "lead", info.d_sae.toLocaleString() + " features (" + info.n_alive.toLocaleString() + " alive) over " +
    info.n_rows.toLocaleString() + (info.kind === "tokens" ? " tokens of " : " texts embedded by ") + (info.model || "?") +
    (info.hookpoint ? " at " + info.hookpoint : "")));
  if (info.report) { const r = el("a", "flink", "static report"); r.href = info.report; head.appendChild(r); }
  box.appendChild(head);
  if (info.stale.length) box.appendChild(el("div", "note", "Not shown (made from other activations or names): " + info.stale.join("; ")));
  if (info.changed.length) box.appendChild(el("div", "note", "Made again since the dashboard started (restart saescope serve to show them): " + info.changed.join(", ")));

  const q = params();
  const controls = el("div", "controls");
  const search = el("input");
  search.type = "search"; search.id = "q";
  search.placeholder = "Search: #id, keywords, explanation, example text, logit-lens tokens";
  search.value = q.get("q") || "";
  controls.appendChild(search);
  function select(id, label, options, value) {
    const l = el("label", null, label + " ");
    const s = el("select"); s.id = id;
    for (const [v, text] of options) { const o = el("option", null, text); o.value = v; s.appendChild(o); }
    if (value !== null && value !== undefined) s.value = value;
    l.appendChild(s); controls.appendChild(l);
    return s;
  }
  const sorts = [["density", "density"], ["max_act", "max activation"], ["count", "active rows"], ["mean_active_act", "mean active act"], ["id", "feature id"]];
  for (const s of info.scorers) sorts.push(["score:" + s, s + " score"]);
  const sort = select("sort", "sort", sorts, q.get("sort") || "density");
  const order = select("order", "", [["desc", "high first"], ["asc", "low first"]], q.get("order") || "desc");
  const dead = select("dead", "show", [["alive", "alive"], ["dead", "dead"], ["all", "all"]], q.get("dead") || "alive");
  let scorer = null, smin = null, smax = null, family = null;
  if (info.scorers.length) {
    scorer = select("scorer", "score", [["", "any"], ...info.scorers.map(s => [s, s])], q.get("scorer") || "");
    for (const [id, label] of [["score_min", "from"], ["score_max", "to"]]) {
      const l = el("label", null, label + " ");
      const i = el("input"); i.type = "number"; i.step = "0.05"; i.id = id; i.value = q.get(id) || "";
      l.appendChild(i); controls.appendChild(l);
      if (id === "score_min") smin = i; else smax = i;
    }
  }
  if (info.families) {
    const fams = (await api("/api/runs/" + encodeURIComponent(info.id) + "/families")).families;
    family = select("family", "family", [["", "any"], ...fams.slice(0, 500).map(f => [String(f.family), "#" + f.parent + " " + (f.name || "") + " (" + f.size + ")"])], q.get("family") || "");
  }
  const count = el("span"); count.id = "count";
  controls.appendChild(count);
  box.appendChild(controls);
  const list = el("div"); list.id = "features";
  box.appendChild(list);
  const pager = el("div", "pager");
  const prev = el("button", null, "‹ previous"); const next = el("button", null, "next ›");
  const where = el("span");
  pager.append(prev, where, next);
  box.appendChild(pager);
  const LIMIT = 50;
  let offset = Number(q.get("offset") || 0) || 0;

  function state() {
    const p = new URLSearchParams();
    if (search.value.trim()) p.set("q", search.value.trim());
    if (sort.value !== "density") p.set("sort", sort.value);
    if (order.value !== "desc") p.set("order", order.value);
    if (dead.value !== "alive") p.set("dead", dead.value);
    if (scorer && scorer.value) {
      p.set("scorer", scorer.value);
      if (smin.value !== "") p.set("score_min", smin.value);
      if (smax.value !== "") p.set("score_max", smax.value);
    }
    if (family && family.value) p.set("family", family.value);
    if (offset) p.set("offset", String(offset));
    return p;
  }
  let seq = 0;
  async function load() {
    const p = state();
    history.replaceState(null, "", location.pathname + (p.toString() ? "?" + p : ""));
    p.set("limit", String(LIMIT));
    const mine = ++seq;
    let page;
    try { page = await api("/api/runs/" + encodeURIComponent(info.id) + "/features?" + p); }
    catch (e) { if (mine === seq) { list.replaceChildren(); showError(list, e); count.textContent = ""; } return; }
    if (mine !== seq) return;
    render(page);
  }
  function render(page) {
    list.replaceChildren();
    count.textContent = page.total.toLocaleString() + " of " + info.d_sae.toLocaleString() + " features";
    if (!page.items.length) { list.appendChild(el("div", "empty", "No feature matches.")); }
    else {
      const t = el("table", "list");
      const h = el("tr");
      for (const c of ["feature", "name", "top example", "density", "max act", ...info.scorers]) h.appendChild(el("th", null, c));
      t.appendChild(h);
      for (const it of page.items) {
        const tr = el("tr"); tr.dataset.feature = it.id;
        const id = el("td"); id.appendChild(featureLink(info.id, it.id)); tr.appendChild(id);
        tr.appendChild(el("td", "lab", it.keywords.slice(0, 6).join(", ") || it.explanation || (it.dead ? "(dead)" : "")));
        tr.appendChild(el("td", "ex", it.top_text ? visible(it.top_text).slice(0, 160) : ""));
        tr.appendChild(el("td", "num", pct(it.density)));
        tr.appendChild(el("td", "num", fmt(it.max_act, 3)));
        for (const s of info.scorers) tr.appendChild(el("td", "num", fmt(it.scores[s], 3)));
        t.appendChild(tr);
      }
      list.appendChild(t);
    }
    where.textContent = page.total ? (page.offset + 1) + "–" + Math.min(page.offset + LIMIT, page.total) : "";
    prev.disabled = page.offset <= 0;
    next.disabled = page.offset + LIMIT >= page.total;
  }
  let timer = null;
  search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => { offset = 0; load(); }, 150); });
  for (const c of [sort, order, dead, scorer, smin, smax, family]) if (c) c.addEventListener("change", () => { offset = 0; load(); });
  prev.addEventListener("click", () => { offset = Math.max(0, offset - LIMIT); load(); });
  next.addEventListener("click", () => { offset += LIMIT; load(); });
  await load();

  if (info.plots.length) {
    const s = section("Plots");
    const figs = el("div", "plots");
    for (const p of info.plots) {
      const f = el("figure");
      const img = el("img"); img.src = p.url; img.alt = p.title; img.title = p.title;
      f.appendChild(img); figs.appendChild(f);
    }
    s.appendChild(figs);
    box.appendChild(s);
  }
})();
