// Helpers every page of the dashboard uses. Every text reaches the page through
// textContent (el(), text nodes), never as markup.
"use strict";

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
function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toPrecision(3) + "%"; }
function visible(t) { return String(t).replace(/\n/g, "\u21b5"); }
function alpha(act, maxAct) { return maxAct > 0 ? Math.max(0, Math.min(1, act / maxAct)) : 0; }
function shade(a) { return "rgba(255, 150, 30, " + a.toFixed(3) + ")"; }

// Where we are: /runs/RUN[/features/F | /inspect | /search | /generate]
function route() {
  const parts = location.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  const out = {run: null, page: document.body.dataset.page, feature: null};
  if (parts[0] === "runs" && parts.length >= 2) out.run = parts[1];
  if (parts[2] === "features" && parts.length >= 4) out.feature = parts[3];
  return out;
}
function runUrl(run, rest) { return "/runs/" + encodeURIComponent(run) + (rest || ""); }
function featureUrl(run, f) { return runUrl(run, "/features/" + encodeURIComponent(f)); }
function params() { return new URLSearchParams(location.search); }

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const msg = data && data.detail ? data.detail : r.status + " " + r.statusText;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return data;
}

function showError(box, err) {
  const d = el("div", "error", err && err.message ? err.message : String(err));
  box.appendChild(d);
  return d;
}

function featureLink(run, f, text) {
  const a = el("a", "flink", text === undefined ? "#" + f : text);
  a.href = featureUrl(run, f);
  return a;
}

// The header: the runs, and the pages of the current run (a page the run cannot
// have is greyed out, its title saying why).
async function nav(current) {
  const box = document.getElementById("nav");
  let runs = [];
  try { runs = (await api("/api/runs")).runs; } catch (e) { return runs; }
  const here = current || (runs[0] && runs[0].id);
  const info = runs.find(r => r.id === here);
  if (runs.length > 1) {
    const sel = el("select");
    sel.id = "run-select";
    for (const r of runs) {
      const o = el("option", null, r.id);
      o.value = r.id;
      if (r.id === here) o.selected = true;
      sel.appendChild(o);
    }
    sel.addEventListener("change", () => { location.href = runUrl(sel.value); });
    box.appendChild(sel);
  }
  const page = document.body.dataset.page;
  const links = [["browser", "Features", runUrl(here)], ["inspect", "Inspect", runUrl(here, "/inspect")],
    ["search", "Search", runUrl(here, "/search")], ["generate", "Generate", runUrl(here, "/generate")],
    ["compare", "Compare", "/compare"], ["apidoc", "API", "/api"]];
  for (const [id, label, href] of links) {
    const a = el("a", page === id || (page === "feature" && id === "browser") ? "here" : null, label);
    a.href = href;
    const why = info && info.missing ? info.missing[id] : null;
    if (why) { a.classList.add("off"); a.title = why; }
    box.appendChild(a);
  }
  return runs;
}

// A token window: every token coloured by the feature's activation on it, the row's
// own token underlined.
function tokenSpans(tokens, acts, center, maxAct) {
  const wrap = el("span", "toks");
  tokens.forEach((t, i) => {
    const s = el("span", i === center ? "tok at" : "tok", visible(t));
    const a = acts ? acts[i] || 0 : 0;
    if (a > 0) {
      s.style.background = shade(alpha(a, maxAct));
      s.title = "activation " + fmt(a, 4);
    }
    wrap.appendChild(s);
  });
  return wrap;
}

// An example's text: a whole text shaded by its activation (sentence runs), or a
// token window (LM runs).
function exampleText(e, maxAct) {
  if (e.tokens) return tokenSpans(e.tokens, e.acts, e.center, maxAct);
  const s = el("span", "span", e.text);
  s.style.background = shade(0.08 + 0.55 * alpha(e.act, maxAct));
  s.title = "activation " + fmt(e.act, 4);
  return s;
}

function kv(rows) {
  const box = el("div", "kv");
  for (const [k, v] of rows) {
    box.appendChild(el("div", "k", k));
    const cell = el("div", "v");
    if (v instanceof Node) cell.appendChild(v); else cell.textContent = v;
    box.appendChild(cell);
  }
  return box;
}

function section(title) {
  const s = el("section");
  if (title) s.appendChild(el("h2", null, title));
  return s;
}

function app() {
  const box = document.getElementById("app");
  box.replaceChildren();
  return box;
}

// The start of a tool page (inspect, search, generate): the navigation, a heading, and
// the run's note when it lacks what the page needs (then null: the page stops there).
async function toolPage(title, need) {
  const here = route();
  const runs = await nav(here.run);
  const info = runs.find(r => r.id === here.run);
  const box = app();
  box.appendChild(el("h2", null, title));
  if (info && info.missing[need]) { box.appendChild(el("div", "note", info.missing[need])); return null; }
  return { here, info, box };
}

// A labelled <select> of `values` (the first selected); returns [label, select].
function labelledSelect(label, values, id) {
  const s = el("select");
  if (id) s.id = id;
  for (const v of values) { const o = el("option", null, v); o.value = v; s.appendChild(o); }
  const l = el("label", null, label); l.appendChild(s);
  return [l, s];
}

// A feature picker for the steering pages: a text box that suggests features by name.
let pickerCount = 0;
function featurePicker(run, value) {
  const input = el("input");
  input.type = "text";
  input.placeholder = "feature id or a word of its name";
  input.className = "feature-input";
  if (value !== undefined && value !== null) input.value = String(value);
  const list = el("datalist");
  list.id = "features-" + (++pickerCount);
  input.setAttribute("list", list.id);
  let timer = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    const q = input.value.trim();
    if (!q || /^#?\d+$/.test(q)) return;
    timer = setTimeout(async () => {
      try {
        const page = await api("/api/runs/" + encodeURIComponent(run) + "/features?limit=8&q=" + encodeURIComponent(q));
        list.replaceChildren();
        for (const it of page.items) {
          const o = el("option");
          o.value = "#" + it.id + " " + (it.keywords.slice(0, 3).join(", ") || it.explanation || "");
          list.appendChild(o);
        }
      } catch (e) { /* suggestions are a convenience */ }
    }, 200);
  });
  const wrap = el("span", "picker");
  wrap.appendChild(input);
  wrap.appendChild(list);
  return {node: wrap, input};
}

// "#12 some label" or "12" -> 12; any other text -> the word itself
function pickedFeature(text) {
  const t = text.trim();
  const m = t.match(/^#?(\d+)(\s|$)/);
  return m ? Number(m[1]) : t;
}

// Rows of feature edits for the steering pages: operation, feature, strength.
function editRows(run, ops, firstOp) {
  const box = el("div", "edits");
  const rows = [];
  function add(feature, op, strength) {
    const row = el("div", "edit");
    const sel = el("select");
    for (const o of ops) { const opt = el("option", null, o); opt.value = o; sel.appendChild(opt); }
    sel.value = op || firstOp;
    const picker = featurePicker(run, feature);
    const s = el("input"); s.type = "number"; s.step = "0.1"; s.placeholder = "strength"; s.className = "strength";
    if (strength !== undefined && strength !== null) s.value = String(strength);
    const rm = el("button", null, "remove");
    row.append(sel, picker.node, s, rm);
    const item = {row, sel, input: picker.input, strength: s};
    rm.addEventListener("click", () => { row.remove(); rows.splice(rows.indexOf(item), 1); });
    rows.push(item);
    box.appendChild(row);
  }
  function value() {
    return rows.filter(r => r.input.value.trim()).map(r => {
      const e = {feature: pickedFeature(r.input.value), op: r.sel.value};
      if (r.strength.value !== "") e.strength = Number(r.strength.value);
      return e;
    });
  }
  return {box, add, value};
}
