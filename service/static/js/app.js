// The dashboard's entry: hash routing (#/jobs, #/jobs/{id}, #/submit) and the API key form.

import { clearKey, getKey, setKey, setUnauthorizedHandler } from "./api.js";
import { renderJob } from "./job/page.js";
import { renderJobs } from "./jobs.js";
import { renderSubmit } from "./submit/page.js";
import { announce, h } from "./ui.js";

const main = document.getElementById("main");
let cleanup = null;

function route() {
  const path = location.hash.replace(/^#/, "") || "/jobs";
  const job = path.match(/^\/jobs\/([^/]+)$/);
  if (job) return { page: "job", render: (el) => renderJob(el, decodeURIComponent(job[1])) };
  if (path === "/submit") return { page: "submit", render: renderSubmit };
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
  document.title = page === "submit" ? "Submit a job · trainserve" : "Jobs · trainserve"; // the job page names its job
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
