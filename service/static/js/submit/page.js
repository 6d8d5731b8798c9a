// The submit page (#/submit): a spec editor checked as the user types through POST /jobs/validate, with
// each problem pinned to its JSON path, then POST /jobs.

import { api } from "../api.js";
import { announce, h } from "../ui.js";
import { specEditor } from "./editor.js";
import { errorReport, showReport } from "./results.js";

const DEBOUNCE_MS = 350;

// The editor's text as a spec object, or the one problem that keeps it from being one.
function parse(text) {
  try {
    const spec = JSON.parse(text);
    if (spec === null || typeof spec !== "object" || Array.isArray(spec)) {
      return { error: { loc: "", msg: "the spec must be a JSON object" } };
    }
    return { spec };
  } catch (err) {
    return { error: { loc: "", msg: `not valid JSON: ${err.message}` } };
  }
}

export function renderSubmit(main) {
  const view = {
    status: h("p", { id: "validation-status", role: "status", "data-testid": "validation-status" }, "Checking…"),
    results: h("div", { "data-testid": "validation-results" }),
    submitButton: h("button", { type: "submit", "data-testid": "submit-job" }, "Submit"),
  };
  const checker = liveChecker(view, () => editor.textarea.value);
  const editor = specEditor({ onChange: checker.changed });
  view.reveal = editor.reveal;
  main.append(layout(view, editor, (event) => submit(event, view, editor)));
  checker.validate();
  return checker.stop;
}

function layout(view, editor, onsubmit) {
  return h(
    "section",
    {},
    h("div", { class: "page-head" }, h("h1", {}, "Submit a job")),
    h(
      "div",
      { class: "columns submit" },
      h(
        "form",
        { class: "card", onsubmit, "aria-label": "Job spec" },
        editor.examples,
        h("label", { for: "spec-input" }, "Spec (JSON)"),
        editor.textarea,
        h("p", { id: "spec-help", class: "muted hint" }, "Checked as you type. Tab indents; Escape then Tab leaves the editor."),
        h("div", { class: "row" }, view.submitButton, view.status),
      ),
      h("section", { class: "card", "aria-labelledby": "check-title" }, h("h2", { id: "check-title" }, "Static check"), view.results),
    ),
  );
}

// Validates the text a moment after typing stops; answers to older texts are dropped.
function liveChecker(view, text) {
  let timer = null;
  let controller = null;
  let sequence = 0;
  let stopped = false;

  async function validate() {
    const mine = ++sequence;
    controller?.abort();
    const { spec, error } = parse(text());
    if (error) return showReport(view, { ok: false, errors: [error] }, null);
    controller = new AbortController();
    try {
      const report = await api.validate(text(), controller.signal);
      if (mine === sequence && !stopped) showReport(view, report, spec);
    } catch (err) {
      if (err.name !== "AbortError" && !stopped && mine === sequence) showReport(view, errorReport(err), spec);
    }
  }

  function changed() {
    view.status.textContent = "Checking…";
    clearTimeout(timer);
    timer = setTimeout(validate, DEBOUNCE_MS);
  }

  function stop() {
    stopped = true;
    clearTimeout(timer);
    controller?.abort();
  }
  return { validate, changed, stop };
}

async function submit(event, view, editor) {
  event.preventDefault();
  const text = editor.textarea.value;
  const { error } = parse(text);
  if (error) return showReport(view, { ok: false, errors: [error] }, null);
  view.submitButton.disabled = true;
  try {
    const job = await api.submit(text);
    editor.clearDraft();
    announce(`Job ${job.name || job.id} submitted`);
    location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
  } catch (err) {
    view.submitButton.disabled = false;
    showReport(view, errorReport(err), parse(text).spec);
  }
}
