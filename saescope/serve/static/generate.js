// Steered generation (LM runs): a prompt, features and strengths, both continuations.
"use strict";
(async function () {
  const page = await toolPage("Generation steering", "generate");
  if (!page) return;
  const { here, info, box } = page;
  const limit = info ? info.limits.max_new_tokens : 64;
  box.appendChild(el("div", "lead", "Greedy continuations of the prompt, without and with the edits at the SAE's hookpoint " +
    "(the SAE's error term is kept). At most " + limit + " new tokens and " + (info ? info.limits.generation_seconds : "?") + " s a request."));
  const p = params();
  const prompt = el("textarea"); prompt.id = "prompt"; prompt.placeholder = "a prompt";
  prompt.value = p.get("prompt") || "The weather today";
  box.appendChild(prompt);
  const controls = el("div", "controls");
  const n = el("input"); n.type = "number"; n.min = "1"; n.max = String(limit); n.value = String(Math.min(24, limit)); n.id = "max-new-tokens";
  const nl = el("label", null, "new tokens "); nl.appendChild(n);
  const [pl, pos] = labelledSelect("steer at ", ["all", "prompt", "generated"], "positions");
  const [ul, unit] = labelledSelect("unit ", ["typical", "absolute"]);
  controls.append(nl, pl, ul);
  box.appendChild(controls);
  const edits = editRows(here.run, ["add", "clamp", "ablate"], "add");
  box.appendChild(edits.box);
  const buttons = el("div", "controls");
  const more = el("button", null, "+ feature");
  const go = el("button", "primary", "Generate"); go.id = "generate-go";
  buttons.append(more, go);
  box.appendChild(buttons);
  const out = el("div"); out.id = "result";
  box.appendChild(out);
  more.addEventListener("click", () => edits.add());
  edits.add(p.get("feature") || undefined, "add", 2);

  function gen(title, promptText, cont, n, timedOut) {
    const c = el("div");
    c.appendChild(el("h3", null, title + " (" + n + " tokens" + (timedOut ? ", stopped by the time limit" : "") + ")"));
    const g = el("div", "gen");
    g.appendChild(el("span", "prompt", promptText));
    g.appendChild(el("span", "cont", cont));
    c.appendChild(g);
    return c;
  }
  async function run() {
    out.replaceChildren();
    go.disabled = true;
    out.appendChild(el("div", "small", "generating… (the first request loads the model)"));
    try {
      const r = await api("/api/runs/" + encodeURIComponent(here.run) + "/generate",
        {prompt: prompt.value, max_new_tokens: Number(n.value) || 24, positions: pos.value, unit: unit.value, edits: edits.value()});
      out.replaceChildren();
      for (const e of r.edits) {
        const line = el("div", "small");
        line.appendChild(document.createTextNode(e.op + " "));
        line.appendChild(featureLink(here.run, e.feature));
        line.appendChild(document.createTextNode((e.label ? " [" + e.label + "]" : "") + (e.op === "ablate" ? "" : ": " + fmt(e.strength, 3) + " (= " + fmt(e.absolute, 3) + " absolute)")));
        out.appendChild(line);
      }
      if (!r.edits.length) out.appendChild(el("div", "small", "no edit: both columns are the plain model"));
      const cols = el("div", "cols");
      cols.appendChild(gen("Unsteered", r.prompt, r.unsteered, r.new_tokens[0], r.stopped_by_time[0]));
      cols.appendChild(gen("Steered", r.prompt, r.steered, r.new_tokens[1], r.stopped_by_time[1]));
      out.appendChild(cols);
      out.appendChild(el("div", "small", r.seconds + " s"));
    } catch (e) { out.replaceChildren(); showError(out, e); }
    go.disabled = false;
  }
  go.addEventListener("click", run);
})();
