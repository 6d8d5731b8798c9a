// The submit page (#/submit): a spec editor checked as the user types through POST /jobs/validate, with
// each problem pinned to its JSON path, then POST /jobs.

import { api } from "./api.js";
import { EXAMPLES } from "./examples.js";
import { layerTable, reportSummary, warningList } from "./report.js";
import { announce, fill, formatNumber, h } from "./ui.js";

const DEBOUNCE_MS = 350;
const DRAFT_STORAGE = "trainserve.draft";

export function renderSubmit(main) {
  let timer = null;
  let controller = null;
  let sequence = 0; // answers to older texts are dropped
  let stopped = false;

  const exampleSelect = h(
    "select",
    { id: "example-select", "data-testid": "example-select" },
    h("option", { value: "" }, "Choose an example…"),
    EXAMPLES.map((e) => h("option", { value: e.id }, e.label)),
  );
  const editor = h("textarea", {
    id: "spec-input",
    class: "code",
    rows: "28",
    spellcheck: "false",
    autocapitalize: "off",
    autocomplete: "off",
    "data-testid": "spec-input",
    "aria-describedby": "spec-help validation-status",
  });
  editor.value = sessionStorage.getItem(DRAFT_STORAGE) || pretty(EXAMPLES[0].spec);
  const status = h("p", { id: "validation-status", role: "status", "data-testid": "validation-status" }, "Checking…");
  const results = h("div", { "data-testid": "validation-results" });
  const submitButton = h("button", { type: "submit", "data-testid": "submit-job" }, "Submit");

  main.append(
    h(
      "section",
      {},
      h("div", { class: "page-head" }, h("h1", {}, "Submit a job")),
      h(
        "div",
        { class: "columns submit" },
        h(
          "form",
          { class: "card", onsubmit: submit, "aria-label": "Job spec" },
          h("div", { class: "row" }, h("label", { for: "example-select" }, "Start from"), exampleSelect),
          h("label", { for: "spec-input" }, "Spec (JSON)"),
          editor,
          h("p", { id: "spec-help", class: "muted hint" }, "Checked as you type. Tab indents; Escape then Tab leaves the editor."),
          h("div", { class: "row" }, submitButton, status),
        ),
        h("section", { class: "card", "aria-labelledby": "check-title" }, h("h2", { id: "check-title" }, "Static check"), results),
      ),
    ),
  );

  exampleSelect.addEventListener("change", () => {
    const example = EXAMPLES.find((e) => e.id === exampleSelect.value);
    if (!example) return;
    editor.value = pretty(example.spec);
    changed();
  });
  editor.addEventListener("input", changed);
  // Tab indents inside the editor; Escape then Tab still leaves it, so keyboard users are not trapped.
  let escaped = false;
  editor.addEventListener("keydown", (event) => {
    if (event.key === "Escape") escaped = true;
    else if (event.key === "Tab" && !event.shiftKey && !escaped) {
      event.preventDefault();
      editor.setRangeText("  ", editor.selectionStart, editor.selectionEnd, "end");
      changed();
    } else if (event.key !== "Tab") escaped = false;
  });

  function changed() {
    sessionStorage.setItem(DRAFT_STORAGE, editor.value);
    status.textContent = "Checking…";
    clearTimeout(timer);
    timer = setTimeout(validate, DEBOUNCE_MS);
  }

  function parse() {
    try {
      const spec = JSON.parse(editor.value);
      if (spec === null || typeof spec !== "object" || Array.isArray(spec)) {
        return { error: { loc: "", msg: "the spec must be a JSON object" } };
      }
      return { spec };
    } catch (err) {
      return { error: { loc: "", msg: `not valid JSON: ${err.message}` } };
    }
  }

  async function validate() {
    const mine = ++sequence;
    controller?.abort();
    const { spec, error } = parse();
    if (error) {
      show({ ok: false, errors: [error] }, null);
      return;
    }
    controller = new AbortController();
    try {
      const report = await api.validate(editor.value, controller.signal);
      if (mine === sequence && !stopped) show(report, spec);
    } catch (err) {
      if (err.name === "AbortError" || stopped || mine !== sequence) return;
      show({ ok: false, errors: err.errors.length ? err.errors : [{ loc: "", msg: err.message }] }, spec);
    }
  }

  // Renders a report (or a 422 body shaped like one) against the spec it was computed for.
  function show(report, spec) {
    const errors = report.errors || [];
    submitButton.disabled = errors.length > 0;
    if (errors.length) {
      status.textContent = `${errors.length} problem${errors.length > 1 ? "s" : ""}`;
      status.className = "error";
    } else {
      status.textContent = `Valid · ${formatNumber(report.total_params)} parameters`;
      status.className = "ok";
    }
    const layers = spec?.model?.layers;
    fill(
      results,
      errors.length
        ? h(
            "ul",
            { class: "errors", "data-testid": "spec-errors" },
            errors.map((e) =>
              h(
                "li",
                { "data-loc": e.loc || "" },
                e.loc ? h("button", { type: "button", class: "loc", onclick: () => reveal(e.loc) }, e.loc) : null,
                e.loc ? ": " : "",
                e.msg,
              ),
            ),
          )
        : null,
      warningList(report.warnings),
      report.layers || Array.isArray(layers) ? layerTable(report, { specLayers: Array.isArray(layers) ? layers : null, errors }) : null,
      report.layers ? reportSummary(report) : null,
    );
  }

  // Selects the text of the value a JSON path names, so the user lands on the problem.
  function reveal(loc) {
    const span = locate(editor.value, loc);
    if (!span) return;
    editor.focus();
    editor.setSelectionRange(span[0], span[1]);
    const line = editor.value.slice(0, span[0]).split("\n").length - 1;
    const lineHeight = parseFloat(getComputedStyle(editor).lineHeight) || 18;
    editor.scrollTop = Math.max(0, (line - 3) * lineHeight);
  }

  async function submit(event) {
    event.preventDefault();
    const { error } = parse();
    if (error) {
      show({ ok: false, errors: [error] }, null);
      return;
    }
    submitButton.disabled = true;
    try {
      const job = await api.submit(editor.value);
      sessionStorage.removeItem(DRAFT_STORAGE);
      announce(`Job ${job.name || job.id} submitted`);
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      submitButton.disabled = false;
      show({ ok: false, errors: err.errors.length ? err.errors : [{ loc: "", msg: err.message }] }, parse().spec);
    }
  }

  validate();
  return () => {
    stopped = true;
    clearTimeout(timer);
    controller?.abort();
  };
}

function pretty(spec) {
  return JSON.stringify(spec, null, 2);
}

// "model.layers[2].in_features" → ["model", "layers", 2, "in_features"]
function splitLoc(loc) {
  return [...loc.matchAll(/([^.[\]]+)|\[(\d+)\]/g)].map((m) => (m[2] !== undefined ? Number(m[2]) : m[1]));
}

// The [start, end) offsets in `text` of the value at JSON path `loc`, or of its deepest existing parent
// when the path names a missing field. A small scanner over already valid JSON: no positions come out of
// JSON.parse.
export function locate(text, loc) {
  let i = 0;
  const space = () => {
    while (i < text.length && /\s/.test(text[i])) i++;
  };
  const skipString = () => {
    i++;
    while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    i++;
  };
  const skipValue = () => {
    space();
    if (text[i] === '"') return skipString();
    if (text[i] === "{" || text[i] === "[") {
      let depth = 0;
      do {
        if (text[i] === '"') {
          skipString();
          continue;
        }
        if (text[i] === "{" || text[i] === "[") depth++;
        else if (text[i] === "}" || text[i] === "]") depth--;
        i++;
      } while (depth > 0 && i < text.length);
      return;
    }
    while (i < text.length && !/[,\]}\s]/.test(text[i])) i++;
  };
  const next = () => {
    space();
    if (text[i] === ",") i++;
    space();
  };

  let found = null;
  space();
  for (const key of splitLoc(loc)) {
    if (typeof key === "number" && text[i] === "[") {
      i++;
      space();
      for (let n = 0; n < key && i < text.length && text[i] !== "]"; n++) {
        skipValue();
        next();
      }
      if (i >= text.length || text[i] === "]") return found;
    } else if (typeof key === "string" && text[i] === "{") {
      i++;
      space();
      let hit = false;
      while (i < text.length && text[i] !== "}") {
        const start = i;
        skipString();
        const name = JSON.parse(text.slice(start, i));
        space();
        i++; // the colon
        space();
        if (name === key) {
          hit = true;
          break;
        }
        skipValue();
        next();
      }
      if (!hit) return found;
    } else {
      return found;
    }
    const start = i;
    skipValue();
    found = [start, i];
    i = start;
  }
  return found;
}
