// The models page (#/models): each registered model with its versions (the job and checkpoint each pins)
// and its aliases (GET /models, GET /models/{name}).

import { api } from "./api.js";
import { formatTime, h } from "./ui.js";

export function renderModels(main) {
  const controller = new AbortController();
  const list = h("div", { "data-testid": "models" }, h("p", { class: "muted", role: "status" }, "Loading…"));
  main.append(h("section", {}, h("div", { class: "page-head" }, h("h1", {}, "Models")), list));
  load(list, controller.signal);
  return () => controller.abort();
}

async function load(list, signal) {
  try {
    const page = await api.listModels({ limit: "100" }, signal);
    const items = page.items ?? page;
    if (!items.length) {
      list.replaceChildren(h("p", { class: "muted" }, "No models yet: register a job's checkpoint with POST /models."));
      return;
    }
    // The list may carry only names and counts: each model's versions and aliases come from its own read.
    const models = await Promise.all(items.map((m) => (m.versions ? m : api.getModel(m.name, signal))));
    list.replaceChildren(...models.map(modelCard));
  } catch (err) {
    if (err.name !== "AbortError") list.replaceChildren(h("p", { class: "error", role: "alert" }, `Could not load models: ${err.message}`));
  }
}

// Aliases as {alias: version} whether the server sends a map or a list of {alias, version}.
function aliasMap(aliases) {
  if (Array.isArray(aliases)) return Object.fromEntries(aliases.map((a) => [a.alias ?? a.name, a.version]));
  return aliases || {};
}

function modelCard(model) {
  const aliases = aliasMap(model.aliases);
  const byVersion = new Map();
  for (const [alias, version] of Object.entries(aliases)) byVersion.set(version, [...(byVersion.get(version) || []), alias]);
  return h(
    "section",
    { class: "card", "data-model": model.name, "aria-label": `Model ${model.name}` },
    h("h2", {}, h("code", {}, model.name)),
    h(
      "p",
      { class: "muted", "data-testid": "model-aliases" },
      Object.keys(aliases).length ? Object.entries(aliases).map(([a, v]) => `${model.name}@${a} → v${v}`).join(" · ") : "No aliases.",
    ),
    versionTable(model.versions || [], byVersion),
  );
}

function versionTable(versions, byVersion) {
  const row = (v) =>
    h(
      "tr",
      { "data-version": v.version },
      h("td", { class: "num" }, `v${v.version}`),
      h("td", {}, (byVersion.get(v.version) || []).map((a) => h("span", { class: "tag" }, a))),
      h("td", {}, v.job_id ? h("a", { href: `#/jobs/${encodeURIComponent(v.job_id)}` }, v.job_id.slice(0, 8)) : ""),
      h("td", {}, h("code", {}, (v.checkpoint_id || v.checkpoint || "").slice(0, 12))),
      h("td", {}, formatTime(v.created_at)),
    );
  return h(
    "table",
    { "data-testid": "model-versions" },
    h("thead", {}, h("tr", {}, ["Version", "Aliases", "Job", "Checkpoint", "Registered"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, [...versions].sort((a, b) => b.version - a.version).map(row)),
  );
}
