// The job page's static-check report and its spec, with "Edit as a new job" (the submit page's draft).

import { layerTable, reportSummary, warningList } from "../report.js";
import { fill, h } from "../ui.js";

const DRAFT_STORAGE = "trainserve.draft";

export function jobSpec(page) {
  const reportBox = h("div");
  const specBox = h("pre", { class: "spec", "data-testid": "job-spec", tabindex: "0" });
  const editAsNew = () => {
    sessionStorage.setItem(DRAFT_STORAGE, JSON.stringify(page.job?.spec ?? {}, null, 2));
    location.hash = "#/submit";
  };
  const el = [
    h("section", { class: "card", "aria-labelledby": "report-title" }, h("h2", { id: "report-title" }, "Static check"), reportBox),
    h(
      "section",
      { class: "card", "aria-labelledby": "spec-title" },
      h(
        "div",
        { class: "section-head" },
        h("h2", { id: "spec-title" }, "Spec"),
        h("button", { type: "button", class: "secondary", onclick: editAsNew, "data-testid": "edit-spec" }, "Edit as a new job"),
      ),
      specBox,
    ),
  ];

  function show(job, firstTime) {
    if (!firstTime) return; // a job's spec and report never change
    specBox.textContent = JSON.stringify(job.spec ?? {}, null, 2);
    fill(reportBox, reportSummary(job.report), warningList(job.report?.warnings), layerTable(job.report, { specLayers: job.spec?.model?.layers }));
  }
  return { el, show };
}
