// For the admin key: reindex with the job's progress, and key management (keys that may use
// only some collections). A server without the keys routes says so in words.

import { ApiError, getJSON, sendJSON } from "./api.js";
import { $, describe, el, notify, showError, sleep } from "./ui.js";

const POLL_MS = 1000;

export function initAdmin() {
  $("#reindex-form").addEventListener("submit", (e) => {
    e.preventDefault();
    reindex($("#reindex-collection").value.trim() || null);
  });
  $("#key-create").addEventListener("submit", (e) => {
    e.preventDefault();
    createKey();
  });
}

export function showAdmin(isAdmin) {
  $("#admin").hidden = !isAdmin;
  if (isAdmin) listKeys();
}

async function reindex(collection) {
  const button = $("#reindex-button");
  const bar = $("#reindex-progress");
  const state = $("#reindex-state");
  button.disabled = true;
  $("#reindex-job").hidden = false;
  bar.removeAttribute("value");
  state.textContent = "starting";
  try {
    const { job_id: id } = await sendJSON("POST", "v1/admin/reindex", collection ? { collection } : {});
    for (;;) {
      const job = await getJSON(`v1/admin/jobs/${id}`, { retries: 3 });
      $("#reindex-job").dataset.status = job.status;
      if (job.total > 0) {
        bar.max = job.total;
        bar.value = job.done;
      }
      const of = job.total ? ` ${job.done} / ${job.total} pages` : "";
      state.textContent = `${job.status}${of}${job.error ? `: ${job.error}` : ""}`;
      if (job.status === "done" || job.status === "failed") break;
      await sleep(POLL_MS);
    }
  } catch (err) {
    state.textContent = describe(err, "Reindex");
    $("#reindex-job").dataset.status = "failed";
  } finally {
    button.disabled = false;
  }
}

function unavailable(err) {
  return err instanceof ApiError && (err.status === 404 || err.status === 405);
}

const NOT_HERE = "Key management is not available on this server yet";

async function listKeys() {
  const state = $("#keys-state");
  let keys;
  try {
    keys = (await getJSON("v1/admin/keys")).keys;
  } catch (err) {
    $("#keys").hidden = true;
    state.textContent = unavailable(err)
      ? `${NOT_HERE} (it answered ${err.status}: ${err.detail}).`
      : describe(err, "The keys");
    return;
  }
  state.textContent = keys.length ? "" : "No keys made yet: the service's own keys are settings.";
  $("#keys").hidden = keys.length === 0;
  $("#keys tbody").replaceChildren(
    ...keys.map((k) =>
      el(
        "tr",
        { "data-id": k.id },
        el("td", {}, k.name),
        el("td", {}, (k.collections || []).join(", ")),
        el("td", {}, (k.created_at || "").slice(0, 16).replace("T", " ")),
        el("td", {}, el("button", { class: "quiet danger", onclick: () => revoke(k) }, "Revoke")),
      ),
    ),
  );
}

async function createKey() {
  const name = $("#key-name").value.trim();
  const collections = $("#key-collections")
    .value.split(",")
    .map((c) => c.trim())
    .filter(Boolean);
  const shown = $("#new-key");
  try {
    const made = await sendJSON("POST", "v1/admin/keys", { name, collections });
    const copy = el("button", { class: "quiet" }, "Copy");
    copy.addEventListener("click", () => navigator.clipboard?.writeText(made.key));
    shown.replaceChildren(
      `Key for ${name} (shown this once, keep it now): `,
      el("code", {}, made.key),
      " ",
      copy,
    );
    shown.hidden = false;
    $("#key-create").reset();
  } catch (err) {
    if (unavailable(err)) notify(`${NOT_HERE} (it answered ${err.status}: ${err.detail}).`);
    else showError(err, "Creating the key");
  }
  listKeys();
}

async function revoke(k) {
  if (!confirm(`Revoke the key ${k.name}? Requests with it are refused at once.`)) return;
  try {
    await sendJSON("DELETE", `v1/admin/keys/${k.id}`);
  } catch (err) {
    if (err.status !== 404) showError(err, `Revoking ${k.name}`);
  }
  listKeys();
}
