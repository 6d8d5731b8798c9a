// A model card's versions, newest first: aliases, the job and checkpoint each pins, its signature in a line,
// when it was registered, and its export downloads (GET /models/{name}/versions/{v}/export).

import { exportLinks } from "../artifacts.js";
import { formatShape, formatTime, h } from "../ui.js";

const COLUMNS = ["Version", "Aliases", "Job", "Checkpoint", "Signature", "Registered", "Export"];

export function versionTable(model, ctx) {
  const byVersion = new Map();
  for (const [alias, version] of Object.entries(model.aliases || {})) byVersion.set(version, [...(byVersion.get(version) || []), alias]);
  const versions = [...(model.versions || [])].sort((a, b) => b.version - a.version);
  return h(
    "table",
    { "data-testid": "model-versions" },
    h("thead", {}, h("tr", {}, COLUMNS.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, versions.map((v) => versionRow(model.name, v, byVersion.get(v.version) || [], ctx))),
  );
}

function versionRow(name, v, aliases, ctx) {
  const path = `models/${encodeURIComponent(name)}/versions/${v.version}/export`;
  return h(
    "tr",
    { "data-version": v.version },
    h("td", { class: "num" }, `v${v.version}`),
    h("td", {}, aliases.sort().map((a) => h("span", { class: "tag" }, a))),
    h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(v.job_id)}`, "data-testid": "version-job" }, v.job_id.slice(0, 8))),
    h("td", {}, h("code", {}, v.checkpoint_id.slice(0, 12))),
    h("td", { "data-testid": "version-signature" }, signatureLine(v.signature)),
    h("td", {}, formatTime(v.created_at)),
    h("td", { class: "exports" }, exportLinks(path, { what: `${name} v${v.version}`, testid: "version-export", onError: ctx.say })),
  );
}

// "[4] (sepal length (cm), …) → 3 classes": the whole signature sits in the title.
function signatureLine(sig) {
  if (!sig) return "";
  const features = sig.inputs.features?.length ? ` (${sig.inputs.features.slice(0, 2).join(", ")}${sig.inputs.features.length > 2 ? ", …" : ""})` : "";
  const out = sig.outputs;
  const gives = out.kind === "classes" ? (out.classes ? `${out.classes.length} classes` : "classes") : `${out.targets?.length ?? 1} value${out.targets?.length > 1 ? "s" : ""}`;
  const title = [
    `features: ${(sig.inputs.features || ["unnamed"]).join(", ")}`,
    out.classes ? `classes: ${out.classes.join(", ")}` : "",
    out.targets ? `targets: ${out.targets.join(", ")}` : "",
  ].filter(Boolean).join("\n");
  return h("span", { title, "data-output-kind": out.kind }, `${formatShape(sig.inputs.shape)}${features} → ${gives}`);
}
