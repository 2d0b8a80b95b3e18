// The JSON API, read from its OpenAPI document (FastAPI's own /docs page needs a CDN).
"use strict";
(async function () {
  await nav(null);
  const box = app();
  box.appendChild(el("h2", null, "JSON API"));
  const lead = el("div", "lead", "Every page of the dashboard reads this API; scripts can too. The OpenAPI document: ");
  const link = el("a", "flink", "/openapi.json"); link.href = "/openapi.json";
  lead.appendChild(link);
  box.appendChild(lead);
  let doc;
  try { doc = await api("/openapi.json"); } catch (e) { showError(box, e); return; }
  if (doc.info && doc.info.description) box.appendChild(el("div", "note", doc.info.description));
  const schemas = (doc.components || {}).schemas || {};
  function typeOf(s) {
    if (!s) return "";
    if (s.$ref) return s.$ref.split("/").pop();
    if (s.anyOf) return s.anyOf.map(typeOf).join(" | ");
    if (s.type === "array") return typeOf(s.items) + "[]";
    return s.type || "";
  }
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const d = el("div", "endpoint");
      const line = el("div");
      line.appendChild(el("span", "method", method.toUpperCase()));
      line.appendChild(el("code", null, path));
      line.appendChild(document.createTextNode("  " + (op.summary || "")));
      d.appendChild(line);
      const ps = (op.parameters || []).map(p => p.name + (p.required ? "" : "?") + ": " + typeOf(p.schema) + (p.description ? " (" + p.description + ")" : ""));
      if (ps.length) d.appendChild(el("div", "small", "parameters: " + ps.join("; ")));
      const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
      if (body) {
        const name = typeOf(body.schema);
        const sch = schemas[name];
        const fields = sch && sch.properties ? Object.entries(sch.properties).map(([k, v]) => k + ((sch.required || []).includes(k) ? "" : "?") + ": " + typeOf(v)) : [];
        d.appendChild(el("div", "small", "body " + name + ": { " + fields.join(", ") + " }"));
      }
      box.appendChild(d);
    }
  }
  const raw = el("details");
  raw.appendChild(el("summary", null, "the OpenAPI document"));
  raw.appendChild(el("pre", "json", JSON.stringify(doc, null, 2)));
  box.appendChild(raw);
})();
