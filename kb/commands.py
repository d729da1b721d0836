"""The `kb` commands over the HTTP API: upload, ask, docs, rm, pin, reindex, keys.

    kb upload report.pdf notes/*.txt --collection finance   # a progress bar per document
    kb ask "How many engineers work in Lisbon?"             # the answer streams in, then citations
    kb docs | kb rm ID | kb pin ID [--off] | kb reindex | kb keys create|list|revoke

The service's URL and key come from --url / --key, else KB_URL and KB_API_KEY (KB_ADMIN_KEY for
reindex and keys), else the keys `kb run` keeps in its data directory (KB_DATA_DIR, ./data), so
that on the machine running `make run` the commands work with no setting at all.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from kb.client import JOB_TERMINAL, TERMINAL, ApiError, Client

console = Console()
err = Console(stderr=True)

Url = Annotated[str | None, typer.Option("--url", help="the service (KB_URL)")]
Key = Annotated[str | None, typer.Option("--key", help="API key (KB_API_KEY)")]
CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="collection")]
POLL_S = 0.5


def _key(given: str | None, kind: Literal["api", "admin"]) -> str | None:
    if given:
        return given
    env = os.environ.get("KB_ADMIN_KEY" if kind == "admin" else "KB_API_KEY")
    if env:
        return env
    if kind == "admin" and os.environ.get("KB_API_KEY"):
        return os.environ["KB_API_KEY"]
    path = Path(os.environ.get("KB_DATA_DIR", "data")) / f"{kind}_key"
    return path.read_text().strip() if path.is_file() else None


def _client(url: str | None, key: str | None, kind: Literal["api", "admin"] = "api") -> Client:
    return Client(url or os.environ.get("KB_URL", "http://127.0.0.1:8000"), _key(key, kind))


def _fail(exc: ApiError) -> typer.Exit:
    err.print(f"[red]error[/red] {exc.detail}" + (f" (HTTP {exc.status})" if exc.status else ""))
    return typer.Exit(1)


def upload(
    paths: Annotated[list[Path], typer.Argument(help="files to upload", exists=True)],
    collection: CollectionOpt = "default",
    wait: Annotated[bool, typer.Option(help="follow each document until ready or failed")] = True,
    url: Url = None,
    key: Key = None,
) -> None:
    """Upload documents, then follow each one until it is ready or failed."""
    failed = 0
    with _client(url, key) as client:
        ids: dict[str, str] = {}  # document id -> file name
        for path in paths:
            try:
                got = client.upload(path, collection)
            except ApiError as exc:
                err.print(f"[red]{path.name}[/red]: {exc.detail} (HTTP {exc.status})")
                failed += 1
                continue
            note = " (already uploaded)" if got.get("duplicate") else ""
            console.print(f"{path.name}: {got['id']} {got['status']}{note}")
            ids[got["id"]] = path.name
        if wait and ids:
            failed += _follow(client, ids)
    if failed:
        raise typer.Exit(1)


def _follow(client: Client, ids: dict[str, str]) -> int:
    """A bar per document (pages encoded of pages) until each is ready or failed."""
    failed = 0
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TextColumn("{task.fields[status]}"), console=console) as bars:
        tasks: dict[str, TaskID] = {
            d: bars.add_task(name, total=None, status="queued") for d, name in ids.items()
        }
        waiting = set(ids)
        while waiting:
            for d in sorted(waiting):
                try:
                    doc = client.document(d)
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    doc = {"status": "failed", "error": "deleted", "pages_done": 0, "pages": 0}
                bars.update(
                    tasks[d], completed=doc["pages_done"], total=doc["pages"], status=doc["status"]
                )
                if doc["status"] in TERMINAL:
                    waiting.discard(d)
                    if doc["status"] == "failed":
                        failed += 1
                        bars.update(tasks[d], status=f"failed: {doc.get('error')}")
            if waiting:
                time.sleep(POLL_S)
    return failed


def ask(
    question: Annotated[str, typer.Argument(help="the question")],
    collection: CollectionOpt = "default",
    stream: Annotated[bool, typer.Option(help="print the answer as it is generated")] = True,
    url: Url = None,
    key: Key = None,
) -> None:
    """Ask the collection; the answer streams in, then its citations."""
    with _client(url, key) as client:
        try:
            if stream:
                final: dict = {}
                for event in client.ask_stream(question, collection):
                    if event.kind == "final":
                        final = event.data
                    elif event.kind == "piece":
                        console.print(event.data.get("text", ""), end="", soft_wrap=True)
                console.print()
                if not final:
                    raise ApiError(0, "the stream ended without its final event")
                result = final
            else:
                result = client.ask(question, collection)
                console.print(result["answer"], soft_wrap=True)
        except ApiError as exc:
            raise _fail(exc) from exc
        _citations(client, result)


def _citations(client: Client, result: dict) -> None:
    if not result.get("citations"):
        return
    names: dict[str, str] = {}
    for c in result["citations"]:
        if c["document_id"] not in names:
            try:
                names[c["document_id"]] = client.document(c["document_id"])["filename"]
            except ApiError:  # deleted since: the id says which it was
                names[c["document_id"]] = ""
    table = Table("file", "page", "tier", "score", "document", title="citations")
    table.title_justify = "left"
    for c in result["citations"]:
        d = c["document_id"]
        table.add_row(names[d], str(c["page"]), c["tier"], f"{c['score']:.2f}", d)
    console.print(table)
    ctx = result.get("context") or {}
    tiers = ", ".join(f"{n} {t}" for t, n in (ctx.get("tiers") or {}).items() if n)
    console.print(f"[dim]{ctx.get('pages')} pages in context ({tiers}), {ctx.get('tokens')} tokens")


def docs(
    collection: Annotated[str | None, typer.Option("--collection", "-c")] = None,
    url: Url = None,
    key: Key = None,
) -> None:
    """List documents: status, pages, pinned."""
    with _client(url, key) as client:
        try:
            rows = client.documents(collection)
        except ApiError as exc:
            raise _fail(exc) from exc
    table = Table("id", "file", "collection", "status", "pages", "pinned")
    for d in rows:
        pages = f"{d['pages_done']}/{d['pages']}" if d["pages"] is not None else "-"
        status = d["status"] + (f": {d['error']}" if d.get("error") else "")
        table.add_row(
            d["id"], d["filename"], d["collection"], status, pages, "yes" if d["pinned"] else ""
        )
    console.print(table)


def rm(
    document_ids: Annotated[list[str], typer.Argument(help="documents to delete")],
    url: Url = None,
    key: Key = None,
) -> None:
    """Delete documents (their originals, page images and tensors no other page shares)."""
    with _client(url, key) as client:
        for d in document_ids:
            try:
                client.delete(d)
            except ApiError as exc:
                raise _fail(exc) from exc
            console.print(f"deleted {d}")


def pin(
    document_id: Annotated[str, typer.Argument()],
    off: Annotated[bool, typer.Option("--off", help="unpin")] = False,
    url: Url = None,
    key: Key = None,
) -> None:
    """Pin a document (its pages keep the exact text tier first), or unpin it with --off."""
    with _client(url, key) as client:
        try:
            doc = client.pin(document_id, not off)
        except ApiError as exc:
            raise _fail(exc) from exc
    console.print(f"{doc['id']} {'pinned' if doc['pinned'] else 'unpinned'}")


def reindex(
    collection: Annotated[str | None, typer.Option("--collection", "-c")] = None,
    wait: Annotated[bool, typer.Option(help="follow the job until it ends")] = True,
    url: Url = None,
    key: Key = None,
) -> None:
    """Re-encode every page (of one collection) with the serving model; admin key."""
    with _client(url, key, "admin") as client:
        try:
            job_id = client.reindex(collection)
            console.print(f"job {job_id}")
            if not wait:
                return
            columns = (TextColumn("reindex"), BarColumn(), MofNCompleteColumn())
            with Progress(*columns, TextColumn("{task.fields[status]}"), console=console) as bar:
                task = bar.add_task("reindex", total=None, status="queued")
                while True:
                    job = client.job(job_id)
                    bar.update(task, completed=job["done"], total=job["total"] or None)
                    bar.update(task, status=job["status"])
                    if job["status"] in JOB_TERMINAL:
                        break
                    time.sleep(POLL_S)
        except ApiError as exc:
            raise _fail(exc) from exc
    if job["status"] != "done":
        err.print(f"[red]job {job['status']}[/red]: {job.get('error')}")
        raise typer.Exit(1)


keys = typer.Typer(help="API keys scoped to collections (admin key)", no_args_is_help=True)


@keys.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="who or what the key is for")],
    collections: Annotated[list[str], typer.Option("--collection", "-c", help="repeatable")],
    url: Url = None,
    key: Key = None,
) -> None:
    """Create a key that sees only the given collections; its secret is shown once."""
    with _client(url, key, "admin") as client:
        try:
            got = client.create_key(name, collections)
        except ApiError as exc:
            raise _fail(exc) from exc
    console.print(f"id  {got['id']}\nkey {got['key']}")
    err.print("[dim]the key is shown once: store it now")


@keys.command("list")
def keys_list(url: Url = None, key: Key = None) -> None:
    """The keys: id, name, collections (never their secrets)."""
    with _client(url, key, "admin") as client:
        try:
            rows = client.keys()
        except ApiError as exc:
            raise _fail(exc) from exc
    table = Table("id", "name", "collections", "created")
    for k in rows:
        table.add_row(k["id"], k["name"], ", ".join(k["collections"]), str(k.get("created_at")))
    console.print(table)


@keys.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument()], url: Url = None, key: Key = None) -> None:
    """Revoke a key at once."""
    with _client(url, key, "admin") as client:
        try:
            client.revoke_key(key_id)
        except ApiError as exc:
            raise _fail(exc) from exc
    console.print(f"revoked {key_id}")


def register(app: typer.Typer) -> None:
    for command in (upload, ask, docs, rm, pin, reindex):
        app.command()(command)
    app.add_typer(keys, name="keys")
