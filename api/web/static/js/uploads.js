// Uploads: files dropped on the drop zone or chosen with the button, one request each (the
// API takes one document per request), each followed to ready or failed with its progress.

import { getJSON, upload } from "./api.js";
import { refreshDocuments } from "./documents.js";
import { $, describe, el, sleep } from "./ui.js";

const POLL_MS = 1000;

let currentCollection = () => "default";

export function initUploads(collection) {
  currentCollection = collection;
  const drop = $("#drop");
  const input = $("#files");
  $("#choose").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    uploadAll([...input.files]);
    input.value = ""; // the same file can be chosen again
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") input.click();
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    uploadAll([...e.dataTransfer.files]);
  });
}

function uploadAll(files) {
  const collection = currentCollection();
  // One after another: each upload has the connection to itself, and its progress means it.
  let previous = Promise.resolve();
  for (const file of files) {
    const item = new UploadItem(file);
    previous = previous.then(() => item.run(collection));
  }
}

class UploadItem {
  constructor(file) {
    this.file = file;
    this.bar = el("progress", { max: 1, value: 0 });
    this.state = el("span", { class: "state" }, "waiting");
    this.node = el(
      "li",
      { class: "upload", "data-file": file.name },
      el("span", { class: "file" }, file.name),
      this.bar,
      this.state,
    );
    $("#uploads").prepend(this.node);
  }

  show(status, text, value = null, max = 1) {
    this.node.dataset.status = status;
    this.state.textContent = text;
    this.bar.max = max;
    if (value === null) this.bar.removeAttribute("value"); // indeterminate
    else this.bar.value = value;
  }

  async run(collection) {
    let accepted;
    try {
      accepted = await upload(this.file, collection, (f) =>
        this.show("uploading", `uploading ${Math.round(f * 100)}%`, f),
      );
    } catch (err) {
      this.show("failed", describe(err, "refused"), 0);
      this.node.append(this.dismissButton());
      return;
    }
    this.node.dataset.id = accepted.id;
    if (accepted.duplicate) this.state.title = "the same file was already in this collection";
    refreshDocuments().catch(() => {});
    await this.follow(accepted.id);
    refreshDocuments().catch(() => {});
  }

  // GET the document until it is ready or failed: pages_done of pages, once pages are known.
  async follow(id) {
    for (;;) {
      let doc;
      try {
        doc = await getJSON(`v1/documents/${id}`, { retries: 3 });
      } catch (err) {
        this.show("failed", describe(err, "lost"), 0);
        return;
      }
      if (doc.status === "ready") {
        this.show("ready", `ready, ${doc.pages} page${doc.pages === 1 ? "" : "s"}`, 1);
        this.node.append(this.dismissButton());
        return;
      }
      if (doc.status === "failed") {
        this.show("failed", `failed: ${doc.error || "unknown error"}`, 0);
        this.node.append(this.dismissButton());
        return;
      }
      if (doc.pages) {
        this.show(doc.status, `${doc.status} ${doc.pages_done} / ${doc.pages} pages`, doc.pages_done, doc.pages);
      } else {
        this.show(doc.status, doc.status, null);
      }
      await sleep(POLL_MS);
    }
  }

  dismissButton() {
    return el("button", { class: "quiet", "aria-label": "dismiss", onclick: () => this.node.remove() }, "×");
  }
}
