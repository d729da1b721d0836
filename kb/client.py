"""A small client of the service's HTTP API, for the `kb` commands (kb.commands) and scripts.

It speaks HTTP only, as any other client would: nothing here reads the catalog or the store.
Errors come back as ``ApiError`` with the status code and the server's one-sentence ``detail``.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

TERMINAL = ("ready", "failed")  # a document's status once nothing more will happen to it
JOB_TERMINAL = ("done", "failed", "cancelled")


class ApiError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass
class StreamEvent:
    """One event of a streamed answer: a ``piece`` of text, or the ``final`` answer (``data``
    then holds the whole answer, its citations and context, as the non-streamed form does)."""

    kind: str
    data: dict[str, Any]


class Client:
    def __init__(self, url: str, key: str | None, timeout: float = 120.0):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach {self.http.base_url}: {exc}") from exc
        if r.status_code >= 400:
            raise ApiError(r.status_code, _detail(r))
        return r

    # --- documents -------------------------------------------------------------------------

    def upload(self, path: Path, collection: str) -> dict[str, Any]:
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as f:
            r = self._call(
                "POST",
                "/v1/documents",
                files={"file": (path.name, f, mime)},
                data={"collection": collection},
            )
        return dict(r.json())

    def document(self, document_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/documents/{document_id}").json())

    def documents(self, collection: str | None = None) -> list[dict[str, Any]]:
        params = {"collection": collection} if collection else {}
        return list(self._call("GET", "/v1/documents", params=params).json()["documents"])

    def delete(self, document_id: str) -> None:
        self._call("DELETE", f"/v1/documents/{document_id}")

    def pin(self, document_id: str, pinned: bool) -> dict[str, Any]:
        r = self._call("PATCH", f"/v1/documents/{document_id}", json={"pinned": pinned})
        return dict(r.json())

    # --- questions -------------------------------------------------------------------------

    def ask(self, question: str, collection: str) -> dict[str, Any]:
        body = {"question": question, "collection": collection}
        return dict(self._call("POST", "/v1/ask", json=body).json())

    def ask_stream(self, question: str, collection: str) -> Iterator[StreamEvent]:
        """The answer as the server streams it (``"stream": true``, text/event-stream)."""
        body = {"question": question, "collection": collection, "stream": True}
        try:
            with connect_sse(self.http, "POST", "/v1/ask", json=body) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    raise ApiError(source.response.status_code, _detail(source.response))
                for sse in source.iter_sse():
                    yield StreamEvent(sse.event, json.loads(sse.data) if sse.data else {})
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach {self.http.base_url}: {exc}") from exc

    # --- administration --------------------------------------------------------------------

    def reindex(self, collection: str | None) -> str:
        body = {"collection": collection} if collection else {}
        return str(self._call("POST", "/v1/admin/reindex", json=body).json()["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/admin/jobs/{job_id}").json())

    def create_key(self, name: str, collections: list[str]) -> dict[str, Any]:
        body = {"name": name, "collections": collections}
        return dict(self._call("POST", "/v1/admin/keys", json=body).json())

    def keys(self) -> list[dict[str, Any]]:
        data = self._call("GET", "/v1/admin/keys").json()
        return list(data["keys"] if isinstance(data, dict) else data)

    def revoke_key(self, key_id: str) -> None:
        self._call("DELETE", f"/v1/admin/keys/{key_id}")


def _detail(r: httpx.Response) -> str:
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        return r.text[:300] or r.reason_phrase
    return detail if isinstance(detail, str) else json.dumps(detail)[:300]
