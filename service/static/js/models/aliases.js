// A model card's aliases: each "name@alias → vN" with a remove button, and the form that points an alias at
// a version (PUT /models/{name}/aliases/{alias}: creates it or moves it).

import { api } from "../api.js";
import { announce, h } from "../ui.js";

export function aliasList(model, ctx) {
  const entries = Object.entries(model.aliases || {}).sort(([a], [b]) => a.localeCompare(b));
  if (!entries.length) return h("p", { class: "muted", "data-testid": "model-aliases" }, "No aliases.");
  return h(
    "ul",
    { class: "aliases", "data-testid": "model-aliases" },
    entries.map(([alias, version]) =>
      h(
        "li",
        { "data-alias": alias, "data-version": version },
        h("code", {}, `${model.name}@${alias}`),
        ` → v${version} `,
        h(
          "button",
          {
            type: "button",
            class: "link-button",
            "data-testid": "alias-delete",
            "aria-label": `Remove the alias ${alias}`,
            onclick: (event) => change(event.currentTarget, ctx, () => api.deleteAlias(model.name, alias), `Removed ${alias}`),
          },
          "remove",
        ),
      ),
    ),
  );
}

export function aliasForm(model, ctx) {
  const id = (what) => `alias-${what}-${model.name}`;
  const alias = h("input", { id: id("name"), required: true, pattern: "[a-z][a-z0-9_.\\-]{0,63}", placeholder: "e.g. prod", spellcheck: "false", "data-testid": "alias-name" });
  const version = h(
    "select",
    { id: id("version"), "data-testid": "alias-version" },
    [...model.versions].sort((a, b) => b.version - a.version).map((v) => h("option", { value: String(v.version) }, `v${v.version}`)),
  );
  const submit = h("button", { type: "submit", "data-testid": "alias-set" }, "Set alias");
  const onsubmit = (event) => {
    event.preventDefault();
    const name = alias.value.trim();
    change(submit, ctx, () => api.setAlias(model.name, name, Number(version.value)), `${model.name}@${name} → v${version.value}`);
  };
  return h(
    "form",
    { class: "row alias-form", onsubmit, "aria-label": `Set an alias of ${model.name}` },
    h("label", { for: id("name") }, "Alias"),
    alias,
    h("label", { for: id("version") }, "version"),
    version,
    submit,
  );
}

// Runs one change, then redraws the card from the server's state.
async function change(button, ctx, call, done) {
  button.disabled = true;
  try {
    await call();
    announce(done);
    await ctx.reload();
  } catch (err) {
    ctx.say(err.errors?.length ? `${err.message}: ${err.errors.map((e) => e.msg).join("; ")}` : err.message);
    button.disabled = false;
  }
}
