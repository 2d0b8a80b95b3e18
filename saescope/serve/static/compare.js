// Two SAEs side by side: each feature of A with its best match in B by decoder cosine.
"use strict";
(async function () {
  await nav(null);
  const box = app();
  box.appendChild(el("h2", null, "Compare SAEs"));
  box.appendChild(el("div", "lead", "Two SAEs of one run (a sweep) or of two runs over the same activations: each feature of A " +
    "with the feature of B whose decoder direction is closest (cosine), and whether the match is mutual. Names and links " +
    "are shown for the SAE each run's latent cache describes."));
  let saes;
  try { saes = (await api("/api/saes")).saes; } catch (e) { showError(box, e); return; }
  const p = params();
  const controls = el("div", "controls");
  function select(id, label, value) {
    const l = el("label", null, label + " ");
    const s = el("select"); s.id = id;
    for (const x of saes) {
      const o = el("option", null, x.key + " (d_sae " + x.d_sae + (x.k ? ", k " + x.k : "") + (x.described ? "" : ", no names") + ")");
      o.value = x.key; s.appendChild(o);
    }
    if (value) s.value = value;
    l.appendChild(s); controls.appendChild(l);
    return s;
  }
  const a = select("sae-a", "A", p.get("a") || (saes[0] && saes[0].key));
  const b = select("sae-b", "B", p.get("b") || (saes[1] || saes[0]).key);
  const sort = el("select"); sort.id = "sort";
  for (const [v, t] of [["cosine|desc", "best matched first"], ["cosine|asc", "worst matched first"], ["id|asc", "feature id"]]) { const o = el("option", null, t); o.value = v; sort.appendChild(o); }
  const sl = el("label", null, "sort "); sl.appendChild(sort); controls.appendChild(sl);
  const go = el("button", "primary", "Compare"); go.id = "compare-go";
  controls.appendChild(go);
  box.appendChild(controls);
  const out = el("div"); out.id = "result";
  box.appendChild(out);
  const LIMIT = 50;
  let offset = 0;
  const byKey = new Map(saes.map(x => [x.key, x]));

  function cell(key, f, label) {
    const td = el("td");
    const x = byKey.get(key);
    if (x && x.described) td.appendChild(featureLink(x.run, f)); else td.textContent = "#" + f;
    return td;
  }
  async function load() {
    const [key, dir] = sort.value.split("|");
    const q = new URLSearchParams({a: a.value, b: b.value, sort: key, order: dir, offset: String(offset), limit: String(LIMIT)});
    history.replaceState(null, "", "/compare?" + new URLSearchParams({a: a.value, b: b.value}));
    out.replaceChildren();
    out.appendChild(el("div", "small", "matching… (the first comparison of a pair computes every cosine)"));
    let r;
    try { r = await api("/api/compare?" + q); } catch (e) { out.replaceChildren(); showError(out, e); return; }
    out.replaceChildren();
    out.appendChild(el("div", "small", r.total.toLocaleString() + " features of A: mean best cosine " + fmt(r.summary.mean_cosine, 3) + ", " +
      pct(r.summary["above_0.7"]) + " above 0.7, " + pct(r.summary.mutual) + " mutual best matches"));
    const t = el("table", "list");
    const h = el("tr");
    for (const c of ["A", "name in A", "cosine", "mutual", "B", "name in B", "density A", "density B"]) h.appendChild(el("th", null, c));
    t.appendChild(h);
    for (const it of r.items) {
      const tr = el("tr");
      tr.appendChild(cell(a.value, it.a)); tr.appendChild(el("td", "lab", it.a_label));
      tr.appendChild(el("td", "num", fmt(it.cosine, 3))); tr.appendChild(el("td", "num", it.mutual ? "yes" : ""));
      tr.appendChild(cell(b.value, it.b)); tr.appendChild(el("td", "lab", it.b_label));
      tr.appendChild(el("td", "num", pct(it.a_density))); tr.appendChild(el("td", "num", pct(it.b_density)));
      t.appendChild(tr);
    }
    out.appendChild(t);
    const pager = el("div", "pager");
    const prev = el("button", null, "‹ previous"); const next = el("button", null, "next ›");
    prev.disabled = offset <= 0; next.disabled = offset + LIMIT >= r.total;
    prev.addEventListener("click", () => { offset = Math.max(0, offset - LIMIT); load(); });
    next.addEventListener("click", () => { offset += LIMIT; load(); });
    pager.append(prev, el("span", null, r.total ? (offset + 1) + "–" + Math.min(offset + LIMIT, r.total) : ""), next);
    out.appendChild(pager);
  }
  go.addEventListener("click", () => { offset = 0; load(); });
  if (p.get("a") && p.get("b")) load();
})();
