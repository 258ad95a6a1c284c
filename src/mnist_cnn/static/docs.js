// A small offline reader for this server's /openapi.json (no CDN, unlike FastAPI's default /docs).
"use strict";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const child of children) {
    if (child == null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function resolve(spec, schema) {
  let s = schema || {};
  while (s.$ref) s = s.$ref.split("/").slice(1).reduce((o, k) => o[k], spec);
  return s;
}

function typeOf(spec, schema) {
  const s = resolve(spec, schema);
  if (s.anyOf) return s.anyOf.map((x) => typeOf(spec, x)).join(" | ");
  if (s.type === "array") return `array of ${typeOf(spec, s.items)}`;
  if (s.format === "binary") return "file";
  if (schema && schema.$ref) return schema.$ref.split("/").pop();
  if (s.type === "object" && s.additionalProperties) return `map of ${typeOf(spec, s.additionalProperties)}`;
  return s.type || "any";
}

function fieldsTable(spec, schema) {
  const s = resolve(spec, schema);
  if (!s.properties) return null;
  const required = new Set(s.required || []);
  const rows = Object.entries(s.properties).map(([name, prop]) =>
    el("tr", {},
      el("td", {}, el("code", {}, name), required.has(name) ? " *" : ""),
      el("td", {}, typeOf(spec, prop)),
      el("td", {}, resolve(spec, prop).description || prop.description || "",
        prop.default !== undefined ? ` (default ${JSON.stringify(prop.default)})` : "")));
  return el("table", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"), el("th", {}, "meaning")), ...rows);
}

function operation(spec, path, method, op) {
  const box = el("section", { class: "panel op" },
    el("h2", {}, el("span", { class: `method ${method}` }, method.toUpperCase()), " ", el("code", {}, path)),
    el("p", {}, op.summary || ""), op.description ? el("p", { class: "muted" }, op.description) : null);
  const params = op.parameters || [];
  if (params.length) {
    box.append(el("h3", {}, "Query parameters"));
    box.append(el("table", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "type"), el("th", {}, "meaning")),
      ...params.map((p) => el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, typeOf(spec, p.schema)),
        el("td", {}, p.description || "", p.schema && p.schema.default !== undefined ? ` (default ${JSON.stringify(p.schema.default)})` : "")))));
  }
  if (op.requestBody) {
    box.append(el("h3", {}, "Request body"));
    for (const [type, media] of Object.entries(op.requestBody.content)) {
      box.append(el("p", {}, el("code", {}, type), " — ", typeOf(spec, media.schema)));
      const table = fieldsTable(spec, media.schema);
      if (table) box.append(table);
    }
  }
  box.append(el("h3", {}, "Responses"));
  for (const [code, resp] of Object.entries(op.responses || {})) {
    const media = resp.content && resp.content["application/json"];
    box.append(el("p", {}, el("code", {}, code), " ", resp.description || ""));
    const table = media && fieldsTable(spec, media.schema);
    if (table && code === "200") box.append(table);
  }
  return box;
}

async function main() {
  const root = document.getElementById("api");
  try {
    const spec = await (await fetch("/openapi.json")).json();
    root.textContent = "";
    root.append(el("p", { class: "muted intro" }, spec.info.description || ""));
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(methods)) root.append(operation(spec, path, method, op));
    }
  } catch (err) {
    root.textContent = `cannot load /openapi.json (${err.message})`;
  }
}

main();
