// The document list of the current collection: status, pages, pin, delete; a ready
// document's name opens the page viewer.

import { forgetImages, getJSON, sendJSON } from "./api.js";
import { $, el, showError } from "./ui.js";
import { openViewer } from "./viewer.js";

const SETTLED = new Set(["ready", "failed"]);
const REFRESH_MS = 3000; // while a document of the list is still being processed

let collection = "default";
let documents = new Map(); // id -> DocumentOut
let timer = null;

export function filename(documentId) {
  return documents.get(documentId)?.filename ?? documentId.slice(0, 8);
}

export function setCollection(name) {
  collection = name;
  documents = new Map();
  render();
}

export async function refreshDocuments() {
  clearTimeout(timer);
  try {
    const query = new URLSearchParams({ collection });
    const list = await getJSON(`v1/documents?${query}`);
    documents = new Map(list.documents.map((d) => [d.id, d]));
  } catch (err) {
    documents = new Map();
    render();
    throw err;
  }
  render();
  if ([...documents.values()].some((d) => !SETTLED.has(d.status))) {
    timer = setTimeout(() => refreshDocuments().catch(() => {}), REFRESH_MS);
  }
}

function pagesOf(doc) {
  if (doc.pages === null) return "…";
  return doc.status === "ready" ? `${doc.pages}` : `${doc.pages_done} / ${doc.pages}`;
}

async function pin(doc, pinned, box) {
  box.disabled = true;
  try {
    const updated = await sendJSON("PATCH", `v1/documents/${doc.id}`, { pinned });
    documents.set(doc.id, updated);
  } catch (err) {
    showError(err, `Pinning ${doc.filename}`);
  }
  render();
}

async function remove(doc) {
  if (!confirm(`Delete ${doc.filename} and everything memory keeps of it?`)) return;
  try {
    await sendJSON("DELETE", `v1/documents/${doc.id}`);
  } catch (err) {
    if (err.status !== 404) return showError(err, `Deleting ${doc.filename}`);
  }
  documents.delete(doc.id);
  forgetImages(doc.id);
  render();
}

function row(doc) {
  const name =
    doc.status === "ready" && doc.pages
      ? el("button", { class: "link", onclick: () => openViewer(doc, 1) }, doc.filename)
      : el("span", {}, doc.filename);
  const status = el("span", { class: `status ${doc.status}` }, doc.status);
  const box = el("input", { type: "checkbox", checked: doc.pinned, "aria-label": "pinned" });
  box.addEventListener("change", () => pin(doc, box.checked, box));
  return el(
    "tr",
    { "data-id": doc.id, "data-status": doc.status },
    el("td", { class: "file", title: doc.id }, name),
    el("td", {}, status, doc.error ? el("div", { class: "error-text" }, doc.error) : null),
    el("td", { class: "num" }, pagesOf(doc)),
    el("td", {}, box),
    el("td", {}, el("button", { class: "quiet danger", onclick: () => remove(doc) }, "Delete")),
  );
}

function render() {
  const rows = [...documents.values()].map(row);
  $("#documents tbody").replaceChildren(...rows);
  $("#documents").hidden = rows.length === 0;
  $("#documents-empty").hidden = rows.length > 0;
}
