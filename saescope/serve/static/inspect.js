// Paste a text; see the features it activates (LM runs: on every token).
"use strict";
(async function () {
  const page = await toolPage("Text inspector", "inspect");
  if (!page) return;
  const { here, info, box } = page;
  box.appendChild(el("div", "lead", info && info.kind === "tokens"
    ? "The text is run through the language model to the SAE's hookpoint; each feature's activation on every token is shown."
    : "The text is embedded by the run's sentence model and encoded by the SAE; the features it activates, strongest first."));
  const text = el("textarea"); text.id = "text";
  text.placeholder = "Paste a text"; text.maxLength = info ? info.limits.max_text_chars : 2000;
  text.value = params().get("text") || "";
  box.appendChild(text);
  const controls = el("div", "controls");
  const go = el("button", "primary", "Inspect"); go.id = "inspect";
  const n = el("input"); n.type = "number"; n.min = "1"; n.max = "50"; n.value = "10"; n.id = "n";
  const nl = el("label", null, "features "); nl.appendChild(n);
  controls.append(go, nl);
  box.appendChild(controls);
  const out = el("div"); out.id = "result";
  box.appendChild(out);

  function textsResult(r) {
    if (!r.features.length) { out.appendChild(el("div", "empty", "No feature is active on this text.")); return; }
    const t = el("table", "list");
    const h = el("tr");
    for (const c of ["feature", "activation", "density", "name", "its top example"]) h.appendChild(el("th", null, c));
    t.appendChild(h);
    for (const f of r.features) {
      const tr = el("tr"); tr.dataset.feature = f.feature;
      const id = el("td"); id.appendChild(featureLink(here.run, f.feature)); tr.appendChild(id);
      tr.appendChild(el("td", "num", fmt(f.act, 4)));
      tr.appendChild(el("td", "num", pct(f.density)));
      tr.appendChild(el("td", "lab", f.label));
      tr.appendChild(el("td", "ex", f.top_text));
      t.appendChild(tr);
    }
    out.appendChild(t);
  }
  function tokensResult(r) {
    if (r.truncated) out.appendChild(el("div", "note", "The text was cut to the store's " + r.tokens.length + " tokens."));
    if (!r.features.length) { out.appendChild(el("div", "empty", "No feature is active on any token of this text.")); return; }
    const t = el("table", "list tokgrid");
    const h = el("tr");
    for (const c of ["feature", "max", "name", "activation on each token"]) h.appendChild(el("th", null, c));
    t.appendChild(h);
    for (const f of r.features) {
      const tr = el("tr"); tr.dataset.feature = f.feature;
      const id = el("td"); id.appendChild(featureLink(here.run, f.feature)); tr.appendChild(id);
      tr.appendChild(el("td", "num", fmt(f.max_act, 3)));
      tr.appendChild(el("td", "lab", f.keywords.slice(0, 3).join(", ") || (f.promotes.length ? "promotes " + f.promotes.map(visible).join(" ") : "")));
      const cell = el("td", "tokrow");
      cell.appendChild(tokenSpans(r.tokens, f.acts, -1, f.max_act));
      tr.appendChild(cell);
      t.appendChild(tr);
    }
    out.appendChild(t);
  }
  async function run() {
    out.replaceChildren();
    go.disabled = true;
    out.appendChild(el("div", "small", "working… (the first request loads the model)"));
    try {
      const r = await api("/api/runs/" + encodeURIComponent(here.run) + "/inspect", {text: text.value, n: Number(n.value) || 10});
      out.replaceChildren();
      if (r.kind === "tokens") tokensResult(r); else textsResult(r);
    } catch (e) { out.replaceChildren(); showError(out, e); }
    go.disabled = false;
  }
  go.addEventListener("click", run);
  if (text.value) run();
})();
