// The HTTP API, as this page uses it: every request carries the key; every error becomes an
// ApiError holding the server's `detail` sentence and its status code. Paths are relative, so
// the page also works behind a proxy that serves the API under a prefix.

import { readEvents } from "./sse.js";

const KEY_STORAGE = "kb.key";
let key = localStorage.getItem(KEY_STORAGE) || "";

export function getKey() {
  return key;
}

export function setKey(value) {
  key = value;
  if (value) localStorage.setItem(KEY_STORAGE, value);
  else localStorage.removeItem(KEY_STORAGE);
  forgetImages();
}

export class ApiError extends Error {
  constructor(status, detail, retryAfter = null) {
    super(detail);
    this.status = status; // 0: no answer at all (the connection failed)
    this.detail = detail;
    this.retryAfter = retryAfter; // seconds, from a 429's Retry-After
  }
}

async function errorOf(response) {
  let detail = response.statusText || "error";
  try {
    const body = await response.json();
    if (typeof body.detail === "string") detail = body.detail;
  } catch {
    // not JSON: keep the status text
  }
  const retry = Number(response.headers.get("Retry-After"));
  return new ApiError(response.status, detail, Number.isFinite(retry) && retry > 0 ? retry : null);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// fetch() with the key; a non-2xx answer throws ApiError. `retries`: how many times a 429 is
// retried after its Retry-After (the read-backs share the server's few model slots).
export async function request(method, path, { json, accept, signal, retries = 0 } = {}) {
  const headers = { Authorization: `Bearer ${key}` };
  if (accept) headers.Accept = accept;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetch(path, { method, headers, body, signal });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "the server cannot be reached");
    }
    if (response.ok) return response;
    const error = await errorOf(response);
    if (error.status !== 429 || attempt >= retries) throw error;
    await sleep(1000 * (error.retryAfter || 1));
  }
}

// /healthz answers anyone; with the admin key it adds each part and the model, also when it is
// degraded (503), so its body is read whatever the status.
export async function health() {
  try {
    const response = await fetch("healthz", { headers: { Authorization: `Bearer ${key}` } });
    return await response.json();
  } catch {
    return {};
  }
}

export async function getJSON(path, options) {
  return (await request("GET", path, options)).json();
}

export async function sendJSON(method, path, json, options = {}) {
  const response = await request(method, path, { ...options, json });
  return response.status === 204 ? null : response.json();
}

// One document upload (one file per request), with the bytes sent so far reported to
// onProgress(fraction). XMLHttpRequest, because fetch() reports no upload progress.
export function upload(file, collection, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "v1/documents");
    xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // an answer that is not JSON: only its status is known
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body.detail || xhr.statusText || "error"));
    };
    xhr.onerror = () =>
      reject(
        new ApiError(0, "the connection closed during the upload (is the file over the size limit?)"),
      );
    const form = new FormData();
    form.append("file", file);
    form.append("collection", collection);
    xhr.send(form);
  });
}

// Page images need the Authorization header, so <img src> cannot load them: each is fetched
// once and shown through an object URL, kept until the key changes or its document is deleted.
const images = new Map(); // "documentId/page" -> Promise<object URL>

export function pageImage(documentId, page) {
  const id = `${documentId}/${page}`;
  if (!images.has(id)) {
    const url = request("GET", `v1/documents/${documentId}/pages/${page}/image`, { retries: 2 })
      .then((r) => r.blob())
      .then((blob) => URL.createObjectURL(blob));
    url.catch(() => images.delete(id)); // a failed fetch is tried again next time
    images.set(id, url);
  }
  return images.get(id);
}

export function forgetImages(documentId = null) {
  for (const [id, url] of images) {
    if (documentId === null || id.startsWith(`${documentId}/`)) {
      url.then((u) => URL.revokeObjectURL(u)).catch(() => {});
      images.delete(id);
    }
  }
}

// A question, with the answer's text handed to onPiece(text) as it is generated: `piece`
// events ({"text"}), then one `final` event carrying the whole answer as the non-streamed
// route returns it ({answer, found, citations, context, model}), or an `error` event
// ({"detail"}) if the answer failed once the stream had begun (api/streaming.py). A JSON
// answer (a server that does not stream) is taken whole, as one piece.
export async function ask(question, collection, onPiece, signal) {
  const response = await request("POST", "v1/ask", {
    json: { question, collection, stream: true },
    accept: "text/event-stream, application/json",
    signal,
  });
  if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
    const answer = await response.json();
    onPiece(answer.answer);
    return answer;
  }
  let final = null;
  await readEvents(response, (event, data) => {
    if (event === "piece") onPiece(JSON.parse(data).text);
    else if (event === "final") final = JSON.parse(data);
    else if (event === "error") throw new ApiError(500, JSON.parse(data).detail);
  });
  if (final === null) throw new ApiError(0, "the answer stopped before it was complete");
  return final;
}
