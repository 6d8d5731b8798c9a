// The models page (#/models): each registered model as a card with its aliases (and the form that moves
// them) and its versions (the job and checkpoint each pins, signature, export downloads).

import { api } from "../api.js";
import { h } from "../ui.js";
import { aliasForm, aliasList } from "./aliases.js";
import { versionTable } from "./versions.js";

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
    if (!page.items.length) {
      list.replaceChildren(h("p", { class: "muted" }, "No models yet: register a finished job's checkpoint from its page."));
      return;
    }
    // The list carries names and aliases only: each model's versions come from its own read.
    const models = await Promise.all(page.items.map((m) => api.getModel(m.name, signal)));
    list.replaceChildren(...models.map((m) => modelCard(m, signal)));
  } catch (err) {
    if (err.name !== "AbortError") list.replaceChildren(h("p", { class: "error", role: "alert" }, `Could not load models: ${err.message}`));
  }
}

// A card redraws itself from a fresh GET /models/{name} after each change made in it.
function modelCard(model, signal) {
  const notice = h("p", { class: "error", role: "status", "data-testid": "model-notice" });
  const card = h("section", { class: "card", "data-model": model.name, "aria-label": `Model ${model.name}` });
  const ctx = {
    name: model.name,
    say: (text) => (notice.textContent = text),
    reload: async () => {
      try {
        draw(await api.getModel(model.name, signal));
        ctx.say("");
      } catch (err) {
        if (err.name !== "AbortError") ctx.say(`Could not reload the model: ${err.message}`);
      }
    },
  };
  function draw(m) {
    card.replaceChildren(
      h("h2", {}, h("code", {}, m.name)),
      aliasList(m, ctx),
      aliasForm(m, ctx),
      notice,
      versionTable(m, ctx),
    );
  }
  draw(model);
  return card;
}
