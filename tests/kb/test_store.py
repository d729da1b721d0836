"""One behavioural suite for both object stores: a directory, and S3 against moto's server."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import pytest
import urllib3
from minio import Minio
from pydantic import SecretStr

from kb.settings import Settings
from kb.store import (
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    StoreUnavailable,
    make_store,
)

if TYPE_CHECKING:
    from tests.conftest_services import S3Server

pytest_plugins = ["tests.conftest_services"]


def _bucket_name() -> str:
    return f"kb-test-{uuid.uuid4().hex[:16]}"


def _s3_store(server: S3Server, bucket: str) -> S3Store:
    return S3Store(server.endpoint, server.access_key, server.secret_key, bucket)


def _raw_client(server: S3Server) -> Minio:
    return Minio(server.endpoint, server.access_key, server.secret_key, secure=False)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "objects")
    else:
        # A bucket per test: tests share one server but see only their own objects.
        yield _s3_store(request.getfixturevalue("s3_server"), _bucket_name())


def test_put_get_round_trip(store: ObjectStore) -> None:
    store.put("a/b/c.bin", b"\x00\x01payload", content_type="application/x-test")
    assert store.get("a/b/c.bin") == b"\x00\x01payload"
    assert store.exists("a/b/c.bin")


def test_put_overwrites(store: ObjectStore) -> None:
    store.put("k", b"first")
    store.put("k", b"second")
    assert store.get("k") == b"second"


def test_empty_object(store: ObjectStore) -> None:
    store.put("empty", b"")
    assert store.exists("empty")
    assert store.get("empty") == b""


def test_missing_object(store: ObjectStore, tmp_path: Path) -> None:
    assert not store.exists("nope/missing")
    with pytest.raises(ObjectNotFound) as info:
        store.get("nope/missing")
    assert info.value.key == "nope/missing"
    with pytest.raises(KeyError):  # callers may catch the base class
        store.get("nope/missing")
    with pytest.raises(ObjectNotFound):
        store.get_file("nope/missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_prefix_is_not_an_object(store: ObjectStore) -> None:
    store.put("dir/file", b"x")
    assert not store.exists("dir")
    with pytest.raises(ObjectNotFound):
        store.get("dir")


def test_delete(store: ObjectStore) -> None:
    store.put("x/1", b"1")
    store.put("x/2", b"2")
    store.delete("x/1")
    assert not store.exists("x/1")
    assert store.get("x/2") == b"2"
    store.delete("x/1")  # deleting what is gone is fine (tasks retry)
    store.delete("never/there")


def test_list(store: ObjectStore) -> None:
    keys = ["docs/a/1", "docs/a/2", "docs/ab/1", "docs/b/1", "other"]
    for key in reversed(keys):
        store.put(key, key.encode())
    assert list(store.list()) == keys  # sorted, whatever the write order
    assert list(store.list("docs/a/")) == ["docs/a/1", "docs/a/2"]
    # A plain string prefix, as S3 has it: "docs/a" also matches "docs/ab/...".
    assert list(store.list("docs/a")) == ["docs/a/1", "docs/a/2", "docs/ab/1"]
    assert list(store.list("docs/b/1")) == ["docs/b/1"]
    assert list(store.list("nothing/")) == []


def test_list_dirs(store: ObjectStore) -> None:
    for key in ["t/v1/gist/ab/1", "t/v1/tiny/ab/1", "t/v2/gist/cd/2", "t/top", "u/v3/x"]:
        store.put(key, b"x")
    assert store.list_dirs("t/") == ["t/v1/", "t/v2/"]  # one level, objects not listed
    assert store.list_dirs("t/v1/") == ["t/v1/gist/", "t/v1/tiny/"]
    assert store.list_dirs("") == ["t/", "u/"]
    assert store.list_dirs("nothing/") == []
    store.delete("t/v2/gist/cd/2")  # a level whose objects are gone is gone, as in S3
    assert store.list_dirs("t/") == ["t/v1/"]
    with pytest.raises(ValueError, match="ends with '/'"):
        store.list_dirs("t/v1")


def test_delete_prefix(store: ObjectStore) -> None:
    for key in ["doc1/original", "doc1/pages/1.png", "doc1/pages/2.png", "doc10/x", "doc2/x"]:
        store.put(key, b"x")
    assert store.delete_prefix("doc1/") == 3
    assert list(store.list()) == ["doc10/x", "doc2/x"]
    assert store.delete_prefix("doc1/") == 0
    # A new write under the emptied prefix still works (LocalStore pruned the directories).
    store.put("doc1/pages/1.png", b"again")
    assert store.get("doc1/pages/1.png") == b"again"


def test_put_file_get_file_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    # 6 MiB: more than one S3 multipart part (5 MiB minimum), and not a repeating pattern.
    data = uuid.uuid4().bytes * (6 * 1024 * 1024 // 16) + b"tail"
    src = tmp_path / "upload.bin"
    src.write_bytes(data)
    store.put_file("originals/upload.bin", src, content_type="application/pdf")
    assert store.get("originals/upload.bin") == data

    out = tmp_path / "download" / "copy.bin"
    store.get_file("originals/upload.bin", out)
    assert out.read_bytes() == data
    assert [p.name for p in out.parent.iterdir()] == ["copy.bin"]  # no partial files left


def test_put_file_missing_source(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file("k", tmp_path / "does-not-exist")
    assert not store.exists("k")
    assert list(store.list()) == []


def test_readers_never_see_a_partial_write(store: ObjectStore) -> None:
    # Overwrite one key with two alternating full versions while another thread reads it: every
    # read must be one version whole, never a mix or a truncated file.
    versions = (b"A" * 300_000, b"B" * 300_000)
    store.put("hot", versions[0])
    stop = threading.Event()
    seen: set[bytes] = set()
    failures: list[str] = []

    def read() -> None:
        while not stop.is_set():
            data = store.get("hot")
            if data not in versions:
                failures.append(f"read {len(data)} bytes, starting {data[:8]!r}")
                return
            seen.add(data[:1])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            store.put("hot", versions[i % 2])
    finally:
        stop.set()
        reader.join()
    assert not failures
    assert seen  # the reader did read


def test_ping(store: ObjectStore) -> None:
    store.ping()


def test_satisfies_the_protocol(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)


# -- LocalStore only


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../escape",
        "a/../../escape",
        "a/..",
        "./a",
        "/etc/passwd",
        "a//b",
        "a/",
        "a\\b",
        "..",
        "a/\x00",
        ".kbtmp-abc",
    ],
)
def test_local_rejects_unsafe_keys(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "objects")
    with pytest.raises(ValueError):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.get(key)
    with pytest.raises(ValueError):
        store.delete(key)
    assert not (tmp_path / "escape").exists()


def test_local_rejects_unsafe_prefixes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    for prefix in ["../", "/abs", "a/../b"]:
        with pytest.raises(ValueError):
            list(store.list(prefix))
        with pytest.raises(ValueError):
            store.delete_prefix(prefix)


def test_local_writes_leave_no_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalStore(root)
    store.put("a/b", b"1")
    store.put("a/b", b"2")
    src = tmp_path / "src"
    src.write_bytes(b"3")
    store.put_file("a/c", src)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == ["a/b", "a/c"]


def test_local_failed_write_keeps_old_version_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "objects"
    store = LocalStore(root)
    store.put("k", b"old")
    src = tmp_path / "src"
    src.write_bytes(b"new")

    def copy_then_fail(fsrc: BinaryIO, fdst: BinaryIO, length: int = 0) -> None:
        fdst.write(b"partial")
        raise OSError("disk full")

    # A write that fails half way must leave the old object whole and no temp file behind.
    monkeypatch.setattr("kb.store.shutil.copyfileobj", copy_then_fail)
    with pytest.raises(StoreUnavailable, match="disk full"):  # an OSError, retried by tasks
        store.put_file("k", src)
    assert store.get("k") == b"old"
    assert [p.name for p in root.iterdir()] == ["k"]


def test_local_store_that_cannot_write_says_unavailable(tmp_path: Path) -> None:
    # A real failure of the file system under the store (a file where a directory must be),
    # not a mock: the error is a StoreUnavailable, which the workers retry as transient.
    store = LocalStore(tmp_path / "objects")
    (tmp_path / "objects" / "pages").write_bytes(b"in the way")
    with pytest.raises(StoreUnavailable):
        store.put("pages/ab/abcd.png", b"png")
    (tmp_path / "objects" / "pages").unlink()
    store.put("pages/ab/abcd.png", b"png")  # and once the cause is gone, it works again
    assert store.get("pages/ab/abcd.png") == b"png"


def test_local_listing_ignores_in_flight_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalStore(root)
    store.put("a/x", b"1")
    (root / "a" / ".kbtmp-leftover").write_bytes(b"crashed writer")
    assert list(store.list()) == ["a/x"]


def test_local_removes_writes_abandoned_long_ago(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = LocalStore(root)
    store.put("a/x", b"1")
    killed, in_flight = root / "a" / ".kbtmp-killed", root / ".kbtmp-in-flight"
    killed.write_bytes(b"a writer killed before its rename")
    in_flight.write_bytes(b"a writer at work")
    two_hours_ago = time.time() - 7200
    os.utime(killed, (two_hours_ago, two_hours_ago))
    assert store.remove_abandoned_writes(older_than_s=3600) == 1
    assert not killed.exists() and in_flight.exists()
    assert store.get("a/x") == b"1"


# -- S3Store only


def test_s3_creates_its_bucket(s3_server: S3Server) -> None:
    bucket = _bucket_name()
    raw = _raw_client(s3_server)
    assert not raw.bucket_exists(bucket)
    store = _s3_store(s3_server, bucket)
    store.put("k", b"v")
    assert raw.bucket_exists(bucket)
    assert raw.get_object(bucket, "k").read() == b"v"


def test_s3_bucket_creation_race(s3_server: S3Server) -> None:
    # Processes start together and each finds the bucket missing: all must come up.
    bucket = _bucket_name()
    stores = [_s3_store(s3_server, bucket) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def start(store: S3Store) -> None:
        barrier.wait()
        try:
            store._create_bucket_if_missing()
            store.put(f"from-{id(store)}", b"x")
        except BaseException as e:  # collected for the assert below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list(stores[0].list())) == len(stores)


def test_s3_uses_an_existing_bucket(s3_server: S3Server) -> None:
    bucket = _bucket_name()
    raw = _raw_client(s3_server)
    raw.make_bucket(bucket)
    store = _s3_store(s3_server, bucket)
    store.put("k", b"v")
    assert store.get("k") == b"v"


def test_s3_ping_fails_when_unreachable() -> None:
    from tests.conftest_services import free_port

    store = S3Store(f"127.0.0.1:{free_port()}", "a", "b", "bucket")
    with pytest.raises(urllib3.exceptions.HTTPError):  # connection refused, after retries
        store.ping()


# -- make_store


def test_make_store_local_by_default(tmp_path: Path) -> None:
    store = make_store(Settings(data_dir=tmp_path))
    assert isinstance(store, LocalStore)
    store.put("k", b"v")
    assert (tmp_path / "objects" / "k").read_bytes() == b"v"


def test_make_store_s3_when_endpoint_set(tmp_path: Path, s3_server: S3Server) -> None:
    settings = Settings(
        data_dir=tmp_path,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=SecretStr(s3_server.secret_key),
        s3_bucket=_bucket_name(),
    )
    store = make_store(settings)
    assert isinstance(store, S3Store)
    store.put("k", b"v")
    assert _raw_client(s3_server).get_object(settings.s3_bucket, "k").read() == b"v"
