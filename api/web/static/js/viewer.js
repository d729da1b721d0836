// The page viewer: a page's image beside what memory keeps of it at each tier, from the exact
// text down to a 16-token gist (GET .../pages/{n}/text?tier=...): the forgetting curve, read.

import { getJSON, pageImage } from "./api.js";
import { $, describe, el } from "./ui.js";

// The tiers, exact first, then as they fade; the vision tiers' token counts are
// ingest/tiers.py's (tests/api/test_web_page.py checks that they agree).
export const TIERS = [
  { name: "text", about: "exact text, about one token per 4 bytes" },
  { name: "base", tokens: 256 },
  { name: "small", tokens: 100 },
  { name: "tiny", tokens: 64 },
  { name: "gist", tokens: 16 },
];

let current = null; // {doc, page, abort: AbortController}

export function initViewer() {
  const dialog = $("#viewer");
  $("#viewer-close").addEventListener("click", () => dialog.close());
  $("#viewer-prev").addEventListener("click", () => show(current.doc, current.page - 1));
  $("#viewer-next").addEventListener("click", () => show(current.doc, current.page + 1));
  dialog.addEventListener("close", () => {
    current?.abort.abort();
    current = null;
  });
  dialog.addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft" && current?.page > 1) show(current.doc, current.page - 1);
    if (e.key === "ArrowRight" && current?.page < (current?.doc.pages ?? 0)) {
      show(current.doc, current.page + 1);
    }
  });
}

// doc: a document as the API lists it, or its id.
export async function openViewer(doc, page) {
  if (typeof doc === "string") {
    try {
      doc = await getJSON(`v1/documents/${doc}`);
    } catch (err) {
      doc = { id: doc, filename: doc, pages: page };
    }
  }
  const dialog = $("#viewer");
  if (!dialog.open) dialog.showModal();
  show(doc, page);
}

function show(doc, page) {
  current?.abort.abort();
  current = { doc, page, abort: new AbortController() };
  const { signal } = current.abort;
  $("#viewer-title").textContent = doc.filename;
  $("#viewer-page").textContent = `page ${page} of ${doc.pages ?? "?"}`;
  $("#viewer-prev").disabled = page <= 1;
  $("#viewer-next").disabled = !doc.pages || page >= doc.pages;

  const image = $("#viewer-image");
  image.removeAttribute("src");
  image.alt = `page ${page} of ${doc.filename}`;
  pageImage(doc.id, page)
    .then((url) => signal.aborted || (image.src = url))
    .catch((err) => signal.aborted || (image.alt = describe(err, "The image")));

  const items = TIERS.map((tier) => {
    const kept = el("span", { class: "kept" });
    const text = el("pre", { class: "readback" }, "reading…");
    const about = tier.tokens ? `${tier.tokens} vision tokens` : tier.about;
    const node = el(
      "li",
      { "data-tier": tier.name },
      el("h4", {}, tier.name, " ", el("small", {}, about), " ", kept),
      text,
    );
    return { tier, node, kept, text };
  });
  $("#tiers").replaceChildren(...items.map((i) => i.node));
  readTiers(doc.id, page, items, signal);
}

// One tier after the other (each read-back takes one of the server's few model slots); a
// vision tier's read-back stops at about the length of the page's own text.
async function readTiers(documentId, page, items, signal) {
  let exact = null;
  for (const { tier, node, kept, text } of items) {
    const query = new URLSearchParams({ tier: tier.name });
    if (exact !== null) query.set("max_bytes", readBackBytes(exact));
    let body;
    try {
      body = await getJSON(`v1/documents/${documentId}/pages/${page}/text?${query}`, {
        signal,
        retries: 3,
      });
    } catch (err) {
      if (signal.aborted) return;
      node.classList.add("failed");
      text.textContent = describe(err, "Not read");
      continue;
    }
    if (signal.aborted) return;
    text.textContent = body.text || "(nothing)";
    if (tier.name === "text") exact = body.text;
    else if (exact) kept.textContent = `${Math.round(100 * wordsKept(exact, body.text))}% of its words`;
  }
}

function readBackBytes(exact) {
  const bytes = new TextEncoder().encode(exact).length;
  return String(Math.min(4096, Math.max(64, Math.round(bytes * 1.2) + 32)));
}

// The share of the exact text's words that the read-back still has (each counted once per
// occurrence): a rough measure of what this tier forgot.
export function wordsKept(exact, readBack) {
  const words = (s) => s.toLowerCase().match(/[\p{L}\p{N}]+/gu) || [];
  const left = new Map();
  for (const w of words(readBack)) left.set(w, (left.get(w) || 0) + 1);
  const wanted = words(exact);
  if (wanted.length === 0) return 0;
  let found = 0;
  for (const w of wanted) {
    const n = left.get(w) || 0;
    if (n > 0) {
      found++;
      left.set(w, n - 1);
    }
  }
  return found / wanted.length;
}
