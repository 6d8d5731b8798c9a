// What the job page and the models page both show of a trained model: its signature (what it takes and
// gives) and its export downloads (ONNX, torch.export's pt2).

import { download } from "./api.js";
import { formatShape, h } from "./ui.js";

export const EXPORT_FORMATS = [
  { format: "onnx", label: "ONNX" },
  { format: "pt2", label: "pt2" },
];
const MAX_NAMES = 8; // a digits net has 64 features: the first few say enough

function names(list) {
  if (!list?.length) return "";
  const shown = list.slice(0, MAX_NAMES).join(", ");
  return list.length > MAX_NAMES ? `${shown}, … (${list.length})` : shown;
}

// {"inputs": {"shape", "features"}, "outputs": {"kind", "classes", "targets"}} as a small definition list.
export function signatureView(sig, testid = "signature") {
  const outputs = sig.outputs || {};
  const gives = outputs.kind === "classes" ? `classes: ${names(outputs.classes) || "unnamed"}` : `values${outputs.targets?.length ? `: ${names(outputs.targets)}` : ""}`;
  const rows = [
    ["Input shape", h("code", {}, formatShape(sig.inputs?.shape))],
    ["Features", names(sig.inputs?.features) || "unnamed (rows of numbers)"],
    ["Output", gives],
  ];
  return h(
    "dl",
    { class: "summary signature", "data-testid": testid, "data-output-kind": outputs.kind || "" },
    rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
  );
}

// One link per format to `${path}?format=...`: a real, copyable URL, fetched with the key on click (an
// <a download> cannot send the Authorization header). onError(message) reports a refused export (a 422
// naming a layer that cannot be exported).
export function exportLinks(path, { what, testid, onError }) {
  return EXPORT_FORMATS.map(({ format, label }) =>
    h(
      "a",
      {
        class: "button secondary export",
        href: `${path}?format=${format}`,
        "data-testid": `${testid}-${format}`,
        "data-format": format,
        "aria-label": `Download ${what} as ${label}`,
        onclick: (event) => {
          event.preventDefault();
          const link = event.currentTarget;
          link.setAttribute("aria-busy", "true");
          download(link.getAttribute("href"))
            .catch((err) => onError(`Export failed: ${err.message}`))
            .finally(() => link.removeAttribute("aria-busy"));
        },
      },
      label,
    ),
  );
}
