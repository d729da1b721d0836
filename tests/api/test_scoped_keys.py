"""Scoped keys and collections over HTTP, in-process (TestClient, the in-memory queue; pages are
rendered and encoded in the test by the real pipeline and model). Run twice: on the embedded
defaults (SQLite, a local store directory) and on real servers (PostgreSQL, an S3-protocol
server on loopback).

A key made for some collections sees only them in every route: another collection's document
is not found (404), asking or listing another collection is forbidden (403)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from kb import pipeline
from kb.context import Context
from kb.settings import Settings
from tests.conftest_services import create_database, drop_database
from tests.queues import RecordingQueue
from tests.stack import ADMIN_KEY, API_KEY, make_pdf

if TYPE_CHECKING:
    from tests.conftest_services import S3Server

pytest_plugins = ["tests.conftest_services"]

USER = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module", params=["embedded", "services"])
def client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp(f"keys-{request.param}") / "data"
    given: dict[str, object] = {}
    admin_url = url = None
    if request.param == "services":
        s3: S3Server = request.getfixturevalue("s3_server")
        admin_url = request.getfixturevalue("postgres_admin_url")
        url = create_database(admin_url)
        given = {
            "database_url": url,
            "s3_endpoint": s3.endpoint,
            "s3_access_key": s3.access_key,
            "s3_secret_key": s3.secret_key,
            "s3_bucket": f"kb-keys-{uuid.uuid4().hex[:12]}",
        }
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data_dir,
        api_key=API_KEY,  # type: ignore[arg-type]
        admin_key=ADMIN_KEY,  # type: ignore[arg-type]
        **given,  # type: ignore[arg-type]
    )
    try:
        with TestClient(create_app(settings, queue=RecordingQueue())) as c:
            yield c
    finally:
        if admin_url and url:
            drop_database(admin_url, url)


def ctx_of(client: TestClient) -> Context:
    ctx: Context = client.app.state.ctx  # type: ignore[attr-defined]
    return ctx


def upload_ready(client: TestClient, path: Path, collection: str) -> str:
    """Upload with KB_API_KEY, then render and encode it here, as a worker would."""
    r = client.post(
        "/v1/documents",
        headers=USER,
        files={"file": (path.name, path.read_bytes())},
        data={"collection": collection},
    )
    assert r.status_code == 202, r.text
    doc_id: str = r.json()["id"]
    ctx, chunks = ctx_of(client), []
    pipeline.render_document(ctx, doc_id, on_chunk=chunks.append)
    for numbers in chunks:
        pipeline.encode_pages(ctx, doc_id, numbers)
    assert client.get(f"/v1/documents/{doc_id}", headers=USER).json()["status"] == "ready"
    return doc_id


@pytest.fixture(scope="module")
def docs(client: TestClient, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("docs")
    return {
        "hr": upload_ready(
            client, make_pdf(tmp / "hr.pdf", ["The HR password is swordfish."]), "hr"
        ),
        "sales": upload_ready(
            client, make_pdf(tmp / "sales.pdf", ["Sales rose by 12 percent in May."]), "sales"
        ),
    }


def make_key(client: TestClient, collections: list[str], name: str = "team") -> dict:
    r = client.post(
        "/v1/admin/keys", headers=ADMIN, json={"name": name, "collections": collections}
    )
    assert r.status_code == 201, r.text
    made: dict = r.json()
    return made


def test_a_key_is_made_listed_without_its_secret_and_revoked_at_once(client: TestClient) -> None:
    made = make_key(client, ["hr", "handbook"], name="hr team")
    assert set(made) == {"id", "key", "name", "collections", "created_at"}
    assert (made["name"], made["collections"]) == ("hr team", ["handbook", "hr"])
    key = made["key"]
    assert client.get("/v1/collections", headers=bearer(key)).status_code == 200

    listed = client.get("/v1/admin/keys", headers=ADMIN)
    assert listed.status_code == 200
    (entry,) = [k for k in listed.json()["keys"] if k["id"] == made["id"]]
    assert entry == {k: v for k, v in made.items() if k != "key"}
    # the secret (kbk_<id>_<secret>, and the secret may hold "_" itself) is never listed
    assert key.split("_", 2)[2] not in listed.text

    r = client.delete(f"/v1/admin/keys/{made['id']}", headers=ADMIN)
    assert r.status_code == 204
    r = client.get("/v1/collections", headers=bearer(key))  # the very next request
    assert r.status_code == 401 and r.json() == {"detail": "invalid API key"}
    assert made["id"] not in client.get("/v1/admin/keys", headers=ADMIN).text
    assert client.delete(f"/v1/admin/keys/{made['id']}", headers=ADMIN).status_code == 404
    r = client.delete("/v1/admin/keys/not-an-id", headers=ADMIN)
    assert r.status_code == 404 and r.json() == {"detail": "key not found"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "k", "collections": []}, "collections"),
        ({"name": "k", "collections": ["a\nb"]}, "collections"),
        ({"name": "k", "collections": ["x" * 101]}, "collections"),
        ({"name": "k", "collections": "hr"}, "collections"),
        ({"name": "", "collections": ["hr"]}, "name"),
        ({"name": "k\x00", "collections": ["hr"]}, "name"),
        ({"collections": ["hr"]}, "name"),
        ({"name": "k", "collections": ["hr"], "admin": True}, "admin"),
    ],
)
def test_422_for_a_bad_key_request(client: TestClient, body: dict, field: str) -> None:
    before = client.get("/v1/admin/keys", headers=ADMIN).json()
    r = client.post("/v1/admin/keys", headers=ADMIN, json=body)
    assert r.status_code == 422 and field in r.json()["detail"], r.text
    assert client.get("/v1/admin/keys", headers=ADMIN).json() == before


def test_only_the_admin_key_manages_keys_and_collections(client: TestClient) -> None:
    scoped = make_key(client, ["hr"])["key"]
    for headers in (USER, bearer(scoped)):
        assert client.get("/v1/admin/keys", headers=headers).status_code == 403
        r = client.post("/v1/admin/keys", headers=headers, json={"name": "k", "collections": ["x"]})
        assert r.status_code == 403
        assert client.delete("/v1/collections/hr", headers=headers).status_code == 403
        assert client.post("/v1/admin/reindex", headers=headers).status_code == 403
    assert client.get("/v1/admin/keys", headers=bearer(scoped + "x")).status_code == 401


def test_a_scoped_key_sees_only_its_collections(client: TestClient, docs: dict[str, str]) -> None:
    key = bearer(make_key(client, ["hr", "hr-later"])["key"])
    hr, sales = docs["hr"], docs["sales"]

    # Its own collection: every route answers.
    assert client.get(f"/v1/documents/{hr}", headers=key).json()["collection"] == "hr"
    r = client.get(f"/v1/documents/{hr}/pages/1/image", headers=key)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    r = client.get(f"/v1/documents/{hr}/pages/1/text?tier=text", headers=key)
    assert r.status_code == 200 and "swordfish" in r.json()["text"]
    assert (
        client.patch(f"/v1/documents/{hr}", headers=key, json={"pinned": True}).status_code == 200
    )
    r = client.post(
        "/v1/ask", headers=key, json={"question": "What is the password?", "collection": "hr"}
    )
    assert r.status_code == 200 and r.json()["context"]["pages"] == 1
    listed = client.get("/v1/documents", headers=key).json()["documents"]
    assert [d["id"] for d in listed] == [hr]  # not sales'
    assert [
        d["id"] for d in client.get("/v1/documents?collection=hr", headers=key).json()["documents"]
    ] == [hr]

    # Another collection's document is not found, by every route.
    for path in (
        f"/v1/documents/{sales}",
        f"/v1/documents/{sales}/pages/1/image",
        f"/v1/documents/{sales}/pages/1/text?tier=text",
    ):
        r = client.get(path, headers=key)
        assert r.status_code == 404 and r.json() == {"detail": "document not found"}, path
    r = client.patch(f"/v1/documents/{sales}", headers=key, json={"pinned": True})
    assert r.status_code == 404
    assert client.delete(f"/v1/documents/{sales}", headers=key).status_code == 404
    sales_doc = client.get(f"/v1/documents/{sales}", headers=USER).json()
    assert sales_doc["status"] == "ready" and sales_doc["pinned"] is False  # untouched

    # Asking, listing or uploading into another collection is forbidden, existing or not.
    for collection in ("sales", "default", "nowhere"):
        detail = {"detail": f"this key may not use collection {collection!r}"}
        r = client.post(
            "/v1/ask", headers=key, json={"question": "Sales?", "collection": collection}
        )
        assert (r.status_code, r.json()) == (403, detail)
        r = client.get(f"/v1/documents?collection={collection}", headers=key)
        assert (r.status_code, r.json()) == (403, detail)
        r = client.post(
            "/v1/documents",
            headers=key,
            files={"file": ("n.txt", b"a note")},
            data={"collection": collection},
        )
        assert (r.status_code, r.json()) == (403, detail)
    r = client.post("/v1/ask", headers=key, json={"question": "Sales?"})  # "default"
    assert r.status_code == 403

    # Collections: what the key may use, with counts; one it may use but that is empty, too.
    r = client.get("/v1/collections", headers=key)
    assert r.status_code == 200 and r.json() == {
        "collections": [
            {"name": "hr", "documents": 1, "pages": 1},
            {"name": "hr-later", "documents": 0, "pages": 0},
        ]
    }
    everything = client.get("/v1/collections", headers=USER).json()["collections"]
    assert {"name": "sales", "documents": 1, "pages": 1} in everything
    assert "hr-later" not in str(everything)  # no such collection yet
    r = client.post(
        "/v1/documents",
        headers=key,
        files={"file": ("n.txt", b"A note for later.")},
        data={"collection": "hr-later"},
    )
    assert r.status_code == 202


def test_deleting_a_collection_leaves_nothing_of_its_documents(
    client: TestClient, docs: dict[str, str], tmp_path: Path
) -> None:
    ctx = ctx_of(client)
    before = set(ctx.store.list())
    # One page of it is also a page of the hr document: that one's objects stay.
    gone = [
        upload_ready(
            client,
            make_pdf(tmp_path / "a.pdf", ["Old minutes.", "The HR password is swordfish."]),
            "old",
        ),
        upload_ready(client, make_pdf(tmp_path / "b.pdf", ["More old minutes."]), "old"),
    ]
    key = bearer(make_key(client, ["old"])["key"])
    assert {"name": "old", "documents": 2, "pages": 3} in client.get(
        "/v1/collections", headers=ADMIN
    ).json()["collections"]
    assert len(set(ctx.store.list()) - before) > 3

    r = client.delete("/v1/collections/old", headers=ADMIN)
    assert r.status_code == 204
    assert set(ctx.store.list()) == before  # originals, page images, tensors: all gone
    for doc_id in gone:
        assert client.get(f"/v1/documents/{doc_id}", headers=ADMIN).status_code == 404
    assert "old" not in [
        c["name"] for c in client.get("/v1/collections", headers=ADMIN).json()["collections"]
    ]
    r = client.delete("/v1/collections/old", headers=ADMIN)
    assert r.status_code == 404 and r.json() == {"detail": "collection not found"}
    r = client.delete("/v1/collections/" + "x" * 101, headers=ADMIN)
    assert r.status_code == 422 and "name" in r.json()["detail"]
    # A name may hold a slash (the path takes the rest of it); a queued document goes too.
    r = client.post(
        "/v1/documents",
        headers=USER,
        files={"file": ("n.txt", b"A queued note.")},
        data={"collection": "team/2024"},
    )
    assert r.status_code == 202
    assert client.delete("/v1/collections/team/2024", headers=ADMIN).status_code == 204
    assert client.get(f"/v1/documents/{r.json()['id']}", headers=ADMIN).status_code == 404
    assert set(ctx.store.list()) == before
    # The hr document keeps its shared page; the key for the deleted collection keeps its name.
    r = client.get(f"/v1/documents/{docs['hr']}/pages/1/image", headers=USER)
    assert r.status_code == 200
    assert client.get("/v1/collections", headers=key).json() == {
        "collections": [{"name": "old", "documents": 0, "pages": 0}]
    }
