// Steered semantic search: a query, features to boost or suppress, results before and after.
"use strict";

(async function () {
  const page = await toolPage("Search steering", "search");
  if (!page) return;
  const { here, box } = page;
  box.appendChild(el("div", "lead", "The query is embedded, encoded by the SAE, edited (the SAE's error term is kept) and searched with; " +
    "strengths are in units of each feature's largest activation unless set to absolute."));
  const p = params();
  const controls = el("div", "controls");
  const query = el("input"); query.type = "search"; query.id = "query"; query.placeholder = "a query text";
  query.value = p.get("q") || "";
  const k = el("input"); k.type = "number"; k.min = "1"; k.max = "50"; k.value = "10"; k.id = "k";
  const kl = el("label", null, "results "); kl.appendChild(k);
  const [ul, unit] = labelledSelect("unit ", ["typical", "absolute"], "unit");
  controls.append(query, kl, ul);
  box.appendChild(controls);
  const edits = editRows(here.run, ["boost", "suppress", "clamp", "zero"], "boost");
  box.appendChild(edits.box);
  const buttons = el("div", "controls");
  const more = el("button", null, "+ feature");
  const go = el("button", "primary", "Search"); go.id = "search-go";
  buttons.append(more, go);
  box.appendChild(buttons);
  const out = el("div"); out.id = "result";
  box.appendChild(out);
  more.addEventListener("click", () => edits.add());
  if (p.get("boost")) edits.add(p.get("boost"), "boost"); else edits.add();

  function column(title, hits, before, editFeatures) {
    const c = el("div");
    c.appendChild(el("h3", null, title));
    const t = el("table", "list");
    const h = el("tr");
    for (const x of ["#", "sim", "text", ...editFeatures.map(f => "#" + f)]) h.appendChild(el("th", null, x));
    t.appendChild(h);
    for (const hit of hits) {
      const tr = el("tr", before && !before.has(hit.row) ? "new" : null);
      tr.dataset.row = hit.row;
      tr.appendChild(el("td", "num", hit.rank));
      tr.appendChild(el("td", "num", fmt(hit.score, 3)));
      const td = el("td", "text", hit.text);
      if (hit.shared.length) td.title = "shared with the query: " + hit.shared.map(s => "#" + s.feature + (s.label ? " " + s.label : "")).join("; ");
      tr.appendChild(td);
      for (const f of editFeatures) tr.appendChild(el("td", "num", hit.edited[f] ? fmt(hit.edited[f], 3) : "·"));
      t.appendChild(tr);
    }
    c.appendChild(t);
    return c;
  }
  async function run() {
    out.replaceChildren();
    if (!query.value.trim()) { showError(out, "give a query text"); return; }
    go.disabled = true;
    out.appendChild(el("div", "small", "searching… (the first request loads the model and the index)"));
    try {
      const r = await api("/api/runs/" + encodeURIComponent(here.run) + "/search",
        {query: query.value, k: Number(k.value) || 10, unit: unit.value, edits: edits.value()});
      out.replaceChildren();
      for (const e of r.edits) {
        const line = el("div", "small");
        line.appendChild(document.createTextNode(e.op + " "));
        line.appendChild(featureLink(here.run, e.feature));
        line.appendChild(document.createTextNode((e.label ? " [" + e.label + "]" : "") + (e.op === "zero" ? "" : ": " + fmt(e.strength, 3) + (e.unit === "typical" ? " x its max act (= " + fmt(e.absolute, 3) + ")" : " (absolute)"))));
        out.appendChild(line);
      }
      if (r.after) {
        out.appendChild(el("div", "small", "edited query: cosine " + fmt(r.cosine, 3) + " to the query; " + Math.round(r.overlap * r.before.length) + " of " + r.before.length + " results in both (green: new)"));
        const feats = [...new Set(r.edits.map(e => e.feature))].slice(0, 3);
        const cols = el("div", "cols");
        cols.appendChild(column("Before", r.before, null, feats));
        cols.appendChild(column("After", r.after, new Set(r.before.map(h => h.row)), feats));
        out.appendChild(cols);
      } else {
        out.appendChild(el("div", "small", "no edit: plain search (add a feature to steer)"));
        out.appendChild(column("Results", r.before, null, []));
      }
    } catch (e) { out.replaceChildren(); showError(out, e); }
    go.disabled = false;
  }
  go.addEventListener("click", run);
  query.addEventListener("keydown", e => { if (e.key === "Enter") run(); });
})();
