// Small DOM helpers and the message area.

import { ApiError } from "./api.js";

export const $ = (selector) => document.querySelector(selector);

// el("button", {class: "x", onclick: f}, "text", child): properties the element has are set
// as properties (hidden, value, title...), others as attributes (aria-*, data-*).
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

// What to add to the server's own sentence, by status: how the person can get on.
const NEXT_STEP = {
  0: "check that the service is running",
  401: "enter a valid key at the top of the page",
  403: "this key may not do that",
  413: "the file is larger than the service accepts",
  415: "the service cannot read this kind of file",
  429: "the service is busy: try again in a moment",
  503: "the service cannot take this right now: try again later",
};

// "Upload of a.exe: unsupported file type ... (415: the service cannot read this kind of file)"
export function describe(err, what) {
  if (!(err instanceof ApiError)) return `${what}: ${err.message || err}`;
  const status = err.status ? `HTTP ${err.status}` : "no answer";
  const step = NEXT_STEP[err.status];
  return `${what}: ${err.detail} (${status}${step ? `; ${step}` : ""})`;
}

// A message at the top of the page; errors stay until closed, notes go by themselves.
export function notify(text, kind = "error") {
  const box = el(
    "div",
    { class: `message ${kind}`, role: kind === "error" ? "alert" : "status" },
    el("span", {}, text),
    el("button", { class: "quiet", "aria-label": "close", onclick: () => box.remove() }, "×"),
  );
  $("#messages").prepend(box);
  if (kind !== "error") setTimeout(() => box.remove(), 8000);
  return box;
}

export function showError(err, what) {
  console.error(what, err);
  return notify(describe(err, what), "error");
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
