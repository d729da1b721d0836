// The ask box: the answer streams in as the model generates it, then its citations appear as
// page thumbnails that open the page viewer.

import { ask, pageImage } from "./api.js";
import { filename } from "./documents.js";
import { $, describe, el, showError } from "./ui.js";
import { openViewer } from "./viewer.js";

let currentCollection = () => "default";
let inFlight = null; // the AbortController of the question being answered

export function initAsk(collection) {
  currentCollection = collection;
  $("#ask-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const question = $("#question").value.trim();
    if (question) answer(question);
  });
  $("#question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("#ask-form").requestSubmit();
    }
  });
}

async function answer(question) {
  inFlight?.abort();
  const controller = new AbortController();
  inFlight = controller;
  const box = $("#answer");
  const text = $("#answer-text");
  box.hidden = false;
  box.dataset.state = "streaming";
  text.textContent = "";
  text.classList.remove("not-found");
  $("#answer-meta").textContent = "reading the whole collection…";
  $("#citations").replaceChildren();
  $("#ask-button").disabled = true;
  try {
    const result = await ask(
      question,
      currentCollection(),
      (piece) => controller.signal.aborted || text.append(piece),
      controller.signal,
    );
    if (controller.signal.aborted) return;
    text.textContent = result.answer; // the whole answer, as the server settled it
    text.classList.toggle("not-found", !result.found);
    $("#answer-meta").textContent = contextLine(result);
    $("#citations").replaceChildren(...result.citations.map(thumbnail));
    box.dataset.state = "done";
  } catch (err) {
    if (controller.signal.aborted) return;
    box.dataset.state = "failed";
    text.textContent = "";
    $("#answer-meta").textContent = describe(err, "No answer");
    if (err.status !== 404) showError(err, "The question");
  } finally {
    if (inFlight === controller) {
      inFlight = null;
      $("#ask-button").disabled = false;
    }
  }
}

// "Read 3 pages (1,234 tokens: text 2, gist 1), 0 left out; model reference-..."
function contextLine({ context, model }) {
  const tiers = Object.entries(context.tiers)
    .filter(([, n]) => n > 0)
    .map(([tier, n]) => `${tier} ${n}`)
    .join(", ");
  const left = context.left_out ? `, ${context.left_out} left out` : "";
  const pages = `${context.pages} page${context.pages === 1 ? "" : "s"}`;
  return `Read ${pages} (${context.tokens.toLocaleString("en")} tokens: ${tiers})${left}; model ${model}`;
}

function thumbnail(citation) {
  const name = filename(citation.document_id);
  const image = el("img", { alt: `${name}, page ${citation.page}`, loading: "lazy" });
  pageImage(citation.document_id, citation.page)
    .then((url) => (image.src = url))
    .catch((err) => (image.alt = describe(err, "image")));
  return el(
    "button",
    {
      class: "thumb",
      title: `open page ${citation.page} of ${name}`,
      "data-document": citation.document_id,
      "data-page": citation.page,
      onclick: () => openViewer(citation.document_id, citation.page),
    },
    image,
    el(
      "span",
      { class: "caption" },
      `${name} p. ${citation.page}`,
      el("small", {}, ` ${citation.tier} · ${citation.score.toFixed(2)}`),
    ),
  );
}
