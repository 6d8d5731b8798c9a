// The submit page's spec editor: a textarea where Tab indents, an example picker, and `reveal(loc)` to
// select the value a JSON path names.

import { EXAMPLES } from "../examples.js";
import { h } from "../ui.js";
import { locate } from "./locate.js";

const DRAFT_STORAGE = "trainserve.draft";

export function pretty(spec) {
  return JSON.stringify(spec, null, 2);
}

export function specEditor({ onChange }) {
  const textarea = h("textarea", {
    id: "spec-input",
    class: "code",
    rows: "28",
    spellcheck: "false",
    autocapitalize: "off",
    autocomplete: "off",
    "data-testid": "spec-input",
    "aria-describedby": "spec-help validation-status",
  });
  textarea.value = sessionStorage.getItem(DRAFT_STORAGE) || pretty(EXAMPLES[0].spec);
  const changed = () => {
    sessionStorage.setItem(DRAFT_STORAGE, textarea.value);
    onChange();
  };
  textarea.addEventListener("input", changed);
  indentOnTab(textarea, changed);
  return {
    textarea,
    examples: examplePicker(textarea, changed),
    reveal: (loc) => reveal(textarea, loc),
    clearDraft: () => sessionStorage.removeItem(DRAFT_STORAGE),
  };
}

function examplePicker(textarea, changed) {
  const select = h(
    "select",
    { id: "example-select", "data-testid": "example-select" },
    h("option", { value: "" }, "Choose an example…"),
    EXAMPLES.map((e) => h("option", { value: e.id }, e.label)),
  );
  select.addEventListener("change", () => {
    const example = EXAMPLES.find((e) => e.id === select.value);
    if (!example) return;
    textarea.value = pretty(example.spec);
    changed();
  });
  return h("div", { class: "row" }, h("label", { for: "example-select" }, "Start from"), select);
}

// Tab indents inside the editor; Escape then Tab still leaves it, so keyboard users are not trapped.
function indentOnTab(textarea, changed) {
  let escaped = false;
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Escape") escaped = true;
    else if (event.key === "Tab" && !event.shiftKey && !escaped) {
      event.preventDefault();
      textarea.setRangeText("  ", textarea.selectionStart, textarea.selectionEnd, "end");
      changed();
    } else if (event.key !== "Tab") escaped = false;
  });
}

// Selects the text of the value a JSON path names, so the user lands on the problem.
function reveal(textarea, loc) {
  const span = locate(textarea.value, loc);
  if (!span) return;
  textarea.focus();
  textarea.setSelectionRange(span[0], span[1]);
  const line = textarea.value.slice(0, span[0]).split("\n").length - 1;
  const lineHeight = parseFloat(getComputedStyle(textarea).lineHeight) || 18;
  textarea.scrollTop = Math.max(0, (line - 3) * lineHeight);
}
