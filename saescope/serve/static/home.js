// The runs served, with what each holds and links to its pages.
"use strict";
(async function () {
  const runs = await nav(null);
  const box = app();
  box.appendChild(el("h2", null, "Runs"));
  if (!runs.length) { showError(box, "no run is served"); return; }
  const t = el("table", "list");
  const head = el("tr");
  for (const h of ["run", "rows", "features (alive)", "source", "names", "scores", "families", "search index", ""]) head.appendChild(el("th", null, h));
  t.appendChild(head);
  for (const r of runs) {
    const tr = el("tr");
    const name = el("td");
    const a = el("a", "flink", r.id);
    a.href = runUrl(r.id);
    name.appendChild(a);
    tr.appendChild(name);
    tr.appendChild(el("td", "num", r.n_rows.toLocaleString()));
    tr.appendChild(el("td", "num", r.d_sae.toLocaleString() + " (" + r.n_alive.toLocaleString() + ")"));
    tr.appendChild(el("td", null, (r.kind === "tokens" ? "LM tokens: " : "texts: ") + (r.model || "?") + (r.hookpoint ? " @ " + r.hookpoint : "")));
    tr.appendChild(el("td", "num", r.n_keywords + r.n_explanations));
    tr.appendChild(el("td", null, r.scorers.join(", ") || "–"));
    tr.appendChild(el("td", "num", r.families || "–"));
    tr.appendChild(el("td", null, r.index.join(", ") || "–"));
    const links = el("td");
    for (const [label, href] of [["inspect", runUrl(r.id, "/inspect")], ["search", runUrl(r.id, "/search")], ["generate", runUrl(r.id, "/generate")]]) {
      const l = el("a", "flink", label);
      l.href = href;
      l.className = "flink";
      links.appendChild(l);
      links.appendChild(document.createTextNode(" "));
    }
    tr.appendChild(links);
    t.appendChild(tr);
  }
  box.appendChild(t);
})();
