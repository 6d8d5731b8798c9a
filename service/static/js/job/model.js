// The job page's model card, once the job has a checkpoint: the signature, export downloads for the best and
// latest checkpoints, and the form that registers one of them as a new version of a named model.

import { api } from "../api.js";
import { exportLinks, signatureView } from "../artifacts.js";
import { announce, errorList, fill, h } from "../ui.js";

export function jobModel(page) {
  const signature = h("div", { "data-testid": "job-signature" });
  const exports = h("div", { "data-testid": "job-exports" });
  const el = h(
    "section",
    { class: "card", "aria-labelledby": "model-title", hidden: true, "data-testid": "job-model" },
    h("h2", { id: "model-title" }, "Model"),
    signature,
    h("h3", {}, "Export"),
    h("p", { class: "muted hint" }, "One file with the input normalization and the network, to run without trainserve."),
    exports,
    h("h3", {}, "Register"),
    registerForm(page),
  );
  let shownFor; // the latest checkpoint id the card was filled for

  function show(job) {
    if (!job.latest_checkpoint_id || job.latest_checkpoint_id === shownFor) return;
    const first = shownFor === undefined;
    shownFor = job.latest_checkpoint_id;
    el.hidden = false;
    fill(exports, exportRows(page, job));
    // Every checkpoint of a job has the same signature: read it once.
    if (first) loadSignature(page, signature);
  }
  return { el, show };
}

async function loadSignature(page, target) {
  try {
    target.replaceChildren(signatureView(await api.signature(page.jobId, "latest", page.signal)));
  } catch (err) {
    page.failed("Could not load the signature")(err);
  }
}

function exportRows(page, job) {
  const base = `jobs/${encodeURIComponent(page.jobId)}/checkpoints`;
  const refs = [job.best ? "best" : null, "latest"].filter(Boolean);
  return refs.map((ref) =>
    h(
      "div",
      { class: "row", "data-checkpoint": ref },
      h("span", { class: "export-label" }, `${ref} checkpoint`),
      exportLinks(`${base}/${ref}/export`, { what: `the ${ref} checkpoint`, testid: `export-${ref}`, onError: page.say }),
    ),
  );
}

function registerForm(page) {
  const name = h("input", {
    id: "register-name",
    required: true,
    pattern: "[a-z0-9][a-z0-9_.\\-]{0,99}",
    placeholder: "e.g. churn",
    spellcheck: "false",
    "data-testid": "register-name",
    "aria-describedby": "register-help",
  });
  const checkpoint = h(
    "select",
    { id: "register-checkpoint", "data-testid": "register-checkpoint" },
    h("option", { value: "best" }, "best"),
    h("option", { value: "latest" }, "latest"),
  );
  const output = h("div", { "data-testid": "register-result", "aria-live": "polite" });
  return h(
    "form",
    { onsubmit: (event) => register(event, page, { name, checkpoint, output }) },
    h("div", { class: "row" }, h("label", { for: "register-name" }, "Model name"), name),
    h("p", { id: "register-help", class: "muted hint" }, "Lower-case letters, digits, '_', '.', '-'. A new name starts at version 1."),
    h(
      "div",
      { class: "row" },
      h("label", { for: "register-checkpoint" }, "Checkpoint"),
      checkpoint,
      h("button", { type: "submit", "data-testid": "register-submit" }, "Register"),
    ),
    output,
  );
}

async function register(event, page, { name, checkpoint, output }) {
  event.preventDefault();
  const button = event.submitter;
  if (button) button.disabled = true;
  try {
    const version = await api.registerModel({ name: name.value.trim(), job_id: page.jobId, checkpoint: checkpoint.value });
    output.replaceChildren(registered(version));
    announce(`Registered ${version.model} version ${version.version}`);
  } catch (err) {
    fill(output, h("p", { class: "error" }, err.message), err.errors?.length ? errorList(err.errors, "register-errors") : null);
  } finally {
    if (button) button.disabled = false;
  }
}

function registered(version) {
  return h(
    "p",
    { class: "ok", "data-model": version.model, "data-version": version.version },
    "Registered ",
    h("code", {}, `${version.model}:${version.version}`),
    ` (checkpoint ${version.checkpoint_id.slice(0, 12)}). `,
    h("a", { href: "#/models", "data-testid": "register-models-link" }, "See it on the models page"),
  );
}
