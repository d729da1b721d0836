// The page's wiring: the key (kept in localStorage) and the collection decide what every
// panel shows.

import { initAdmin, showAdmin } from "./admin.js";
import { getJSON, getKey, health, setKey } from "./api.js";
import { initAsk } from "./ask.js";
import { refreshDocuments, setCollection } from "./documents.js";
import { $, describe, el, notify, showError } from "./ui.js";
import { initUploads } from "./uploads.js";
import { initViewer } from "./viewer.js";

const COLLECTION_STORAGE = "kb.collection";
const collection = () => $("#collection").value.trim() || "default";

// Is the key accepted, and is it the admin key? /healthz shows the model only to the admin. A
// key limited to other collections than the one shown switches to the first it may use.
async function useKey() {
  const state = $("#key-state");
  document.body.dataset.key = "checking";
  if (!getKey()) {
    state.textContent = "no key";
    document.body.dataset.key = "none";
    showAdmin(false);
    return;
  }
  state.textContent = "checking…";
  try {
    const names = await listCollections();
    try {
      await refreshDocuments();
    } catch (err) {
      if (err.status !== 403 || names.length === 0) throw err;
      notify(`This key may use ${names.join(", ")}: showing ${names[0]}.`, "note");
      showCollection(names[0]);
      await refreshDocuments();
    }
  } catch (err) {
    state.textContent = err.status === 401 ? "key refused" : "no access";
    document.body.dataset.key = "refused";
    showAdmin(false);
    showError(err, "The key");
    return;
  }
  const parts = await health();
  const admin = Boolean(parts.model);
  state.textContent = admin ? `admin key · model ${parts.model.version}` : "key accepted";
  document.body.dataset.key = admin ? "admin" : "user";
  showAdmin(admin);
}

// The collections the key may see, offered in the collection field; their names.
async function listCollections() {
  const { collections } = await getJSON("v1/collections");
  $("#collections").replaceChildren(
    ...collections.map((c) => el("option", { value: c.name }, `${c.documents} documents`)),
  );
  return collections.map((c) => c.name);
}

function showCollection(name) {
  $("#collection").value = name;
  localStorage.setItem(COLLECTION_STORAGE, name);
  setCollection(name);
}

function init() {
  initViewer();
  initUploads(collection);
  initAsk(collection);
  initAdmin();

  const keyInput = $("#key");
  keyInput.value = getKey();
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setKey(keyInput.value.trim());
    useKey();
  });
  $("#forget-key").addEventListener("click", () => {
    keyInput.value = "";
    setKey("");
    setCollection(collection());
    useKey();
  });

  const input = $("#collection");
  input.value = localStorage.getItem(COLLECTION_STORAGE) || "default";
  setCollection(collection());
  input.addEventListener("change", () => {
    showCollection(collection());
    if (getKey()) refreshDocuments().catch((err) => showError(err, "The documents"));
  });

  useKey().catch((err) => {
    $("#key-state").textContent = describe(err, "The key");
  });
}

init();
