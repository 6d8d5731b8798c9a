// The dashboard's entry: hash routing (#/jobs, #/jobs/{id}, #/submit, #/compare?ids=, #/sweeps[/{id}],
// #/models) and the API key form.

import { clearKey, getKey, setKey, setUnauthorizedHandler } from "./api.js";
import { renderCompare } from "./compare/page.js";
import { renderJob } from "./job/page.js";
import { renderJobs } from "./jobs.js";
import { renderModels } from "./models/page.js";
import { renderSubmit } from "./submit/page.js";
import { renderSweeps } from "./sweeps/list.js";
import { renderSweep } from "./sweeps/page.js";
import { announce, h } from "./ui.js";

const main = document.getElementById("main");
let cleanup = null;

const TITLES = { submit: "Submit a job", compare: "Compare jobs", sweeps: "Sweeps", models: "Models" };

// "#/compare?ids=A,B" → the page, the title of the nav entry it belongs to and its render function.
function route() {
  const [path, query = ""] = (location.hash.replace(/^#/, "") || "/jobs").split("?");
  const params = new URLSearchParams(query);
  const job = path.match(/^\/jobs\/([^/]+)$/);
  if (job) return { page: "job", render: (el) => renderJob(el, decodeURIComponent(job[1])) };
  const sweep = path.match(/^\/sweeps\/([^/]+)$/);
  if (sweep) return { page: "sweeps", render: (el) => renderSweep(el, decodeURIComponent(sweep[1])) };
  if (path === "/compare") {
    const ids = (params.get("ids") || "").split(",").filter(Boolean);
    return { page: "compare", render: (el) => renderCompare(el, ids) };
  }
  if (path === "/submit") return { page: "submit", render: renderSubmit };
  if (path === "/sweeps") return { page: "sweeps", render: renderSweeps };
  if (path === "/models") return { page: "models", render: renderModels };
  return { page: "jobs", render: renderJobs };
}

function stopPage() {
  if (cleanup) cleanup();
  cleanup = null;
  main.replaceChildren();
}

function showPage() {
  stopPage();
  if (!getKey()) {
    showKeyForm();
    return;
  }
  const { page, render } = route();
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${TITLES[page] || "Jobs"} · trainserve`; // a job's or a sweep's page names it once loaded
  cleanup = render(main) || null;
}

function showKeyForm(message = "") {
  stopPage();
  const input = h("input", {
    id: "api-key",
    type: "password",
    autocomplete: "off",
    required: true,
    spellcheck: "false",
    "data-testid": "key-input",
  });
  const form = h(
    "form",
    {
      class: "card key-form",
      "data-testid": "key-form",
      onsubmit: (event) => {
        event.preventDefault();
        if (!input.value.trim()) return;
        setKey(input.value);
        announce("API key saved");
        showPage();
      },
    },
    h("h1", {}, "API key"),
    message ? h("p", { class: "error", role: "alert" }, message) : null,
    h(
      "p",
      {},
      "Paste the key that ",
      h("code", {}, "trainserve-server up"),
      " printed (also in ",
      h("code", {}, "$TRAINSERVE_HOME/api-key"),
      "). It is kept in this browser only.",
    ),
    h("label", { for: "api-key" }, "Key"),
    h("div", { class: "row" }, input, h("button", { type: "submit", "data-testid": "key-save" }, "Save")),
  );
  main.append(form);
  input.focus();
}

setUnauthorizedHandler(() => {
  clearKey();
  showKeyForm("The server refused this key (401). Enter a valid one.");
});

document.getElementById("change-key").addEventListener("click", () => showKeyForm());
document.querySelector(".skip-link").addEventListener("click", (event) => {
  // The default would replace the route in the hash.
  event.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", showPage);
showPage();
