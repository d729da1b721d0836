"""The object store: originals, page images and token tensors, behind one small interface.

Two implementations with the same behaviour: `LocalStore` (a directory, the embedded default) and
`S3Store` (MinIO or any S3-protocol server, through the `minio` SDK). Keys are '/'-separated
strings such as ``originals/<doc id>`` or ``tensors/<model version>/<tier>/<page hash>``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from kb.settings import Settings

DEFAULT_CONTENT_TYPE = "application/octet-stream"


class ObjectNotFound(KeyError):
    """No object under this key (a KeyError, so `except KeyError` callers keep working)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class StoreUnavailable(OSError):
    """The store could not be written: a full disk, a lost mount, a permission an operator
    will fix. Nothing is wrong with the object itself, so callers retry it as transient."""


@runtime_checkable
class ObjectStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None: ...

    def get(self, key: str) -> bytes:
        """The object's bytes; raises ObjectNotFound."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove one object; a missing key is not an error (deletes are retried by tasks)."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with `prefix`; returns how many."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with `prefix` (a plain string prefix, as in S3), in sorted order."""
        ...

    def list_dirs(self, prefix: str) -> Sequence[str]:
        """The distinct next '/'-level under `prefix` (which ends with '/'), each ending with
        '/', sorted: S3's common prefixes, so `list_dirs("tensors/")` names every version."""
        ...

    def remove_abandoned_writes(self, older_than_s: float) -> int:
        """Remove what writes interrupted more than `older_than_s` ago left; returns how many."""
        ...

    def ping(self) -> None:
        """Raise if the store cannot be used (for /healthz)."""
        ...

    def put_file(self, key: str, path: Path, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        """Upload a local file without reading it into memory whole."""
        ...

    def get_file(self, key: str, path: Path) -> None:
        """Download to a local file (written atomically); raises ObjectNotFound."""
        ...


# ---------------------------------------------------------------------------------------------
# Local directory


_TMP_PREFIX = ".kbtmp-"  # in-flight writes; never listed, and no key part may start with it
_COPY_CHUNK = 1024 * 1024


class LocalStore:
    """Objects as files under `root`; every write is atomic (temp file, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- keys -> paths

    def _path(self, key: str) -> Path:
        parts = _split_key(key, allow_empty=False)
        return self.root.joinpath(*parts)

    # -- writes

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        # content_type is S3 metadata; a file has none to keep.
        _write_atomic(self._path(key), lambda f: f.write(data))

    def put_file(self, key: str, path: Path, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        target = self._path(key)
        with open(path, "rb") as src:  # opened first: a missing source leaves nothing behind
            _write_atomic(target, lambda f: shutil.copyfileobj(src, f, _COPY_CHUNK))

    # -- reads

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        try:
            src = source.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None
        with src:
            _write_atomic(Path(path), lambda f: shutil.copyfileobj(src, f, _COPY_CHUNK))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        # Walk only the deepest directory the prefix names fully, then filter by string prefix,
        # so "docs/ab" finds both "docs/ab/1" and "docs/abc" as S3 would.
        parts = _split_key(prefix, allow_empty=True)
        if prefix and not prefix.endswith("/"):
            parts = parts[:-1]
        start = self.root.joinpath(*parts)
        if not start.is_dir():
            return iter(())
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def list_dirs(self, prefix: str) -> Sequence[str]:
        _check_dir_prefix(prefix)
        start = self.root.joinpath(*_split_key(prefix, allow_empty=True))
        if not start.is_dir():
            return []
        # A directory that holds no object (emptied, or only in-flight temp files) is no
        # prefix in S3 either.
        dirs = [e for e in start.iterdir() if e.is_dir() and not e.name.startswith(_TMP_PREFIX)]
        return sorted(f"{prefix}{d.name}/" for d in dirs if _holds_an_object(d))

    # -- deletes

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(IsADirectoryError, NotADirectoryError):
            path.unlink(missing_ok=True)
            self._prune_empty_dirs(path.parent)

    def delete_prefix(self, prefix: str) -> int:
        count = 0
        for key in list(self.list(prefix)):
            path = self._path(key)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                count += 1
            self._prune_empty_dirs(path.parent)
        return count

    def remove_abandoned_writes(self, older_than_s: float) -> int:
        # The temp files of writers killed before their rename; a live writer's is younger.
        deadline, count = time.time() - older_than_s, 0
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                path = Path(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    if name.startswith(_TMP_PREFIX) and path.stat().st_mtime < deadline:
                        path.unlink()
                        count += 1
        return count

    def _prune_empty_dirs(self, directory: Path) -> None:
        # Deleted documents would otherwise leave empty directory trees behind. A concurrent
        # put may lose its directory here; _write_atomic recreates it and retries.
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:  # not empty (or already gone): stop climbing
                return
            directory = directory.parent

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise OSError(f"object store directory {self.root} is not writable")

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"


class _Writer(Protocol):
    def __call__(self, f: BinaryIO, /) -> object: ...


def _holds_an_object(directory: Path) -> bool:
    for _dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
        if any(not name.startswith(_TMP_PREFIX) for name in filenames):
            return True
    return False


def _split_key(key: str, *, allow_empty: bool) -> list[str]:
    """Validate a key (or a prefix) and split it into path parts.

    Keys become file paths under the store root, so anything that could escape the root or
    name two files for one key is refused: '..', '.', absolute paths, backslashes, empty parts.
    """
    if not isinstance(key, str):
        raise TypeError(f"object key must be str, not {type(key).__name__}")
    if key == "":
        if allow_empty:
            return []
        raise ValueError("object key is empty")
    if "\\" in key or "\x00" in key:
        raise ValueError(f"object key {key!r} contains a backslash or NUL")
    if key.startswith("/"):
        raise ValueError(f"object key {key!r} is absolute")
    parts = key.split("/")
    if allow_empty and parts[-1] == "":  # a prefix may end with '/'
        parts = parts[:-1]
    for part in parts:
        if part in ("", ".", ".."):
            raise ValueError(f"object key {key!r} has an empty, '.' or '..' part")
        if part.startswith(_TMP_PREFIX):
            raise ValueError(f"object key {key!r} uses the reserved prefix {_TMP_PREFIX!r}")
    return parts


def _write_atomic(target: Path, write: _Writer) -> None:
    """Write through a temp file in the target's directory, fsync it, then rename over target.

    Readers see either the old file or the new one, never a partial write; a crash leaves at
    worst a temp file that listing ignores. Any OSError (ENOSPC, EIO, EACCES, ...) comes out as
    StoreUnavailable.
    """
    try:
        _write_through_temp(target, write)
    except StoreUnavailable:
        raise
    except OSError as exc:
        raise StoreUnavailable(f"could not write {target}: {exc}") from exc


def _write_through_temp(target: Path, write: _Writer) -> None:
    for attempt in range(3):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
        except FileNotFoundError:
            if attempt == 2:
                raise
            continue  # a concurrent delete_prefix pruned the directory between mkdir and here
        break
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)  # make the rename itself durable


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories; durability best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# S3 protocol (MinIO)


class S3Store:
    """Objects in one S3 bucket, created on first use if missing."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        *,
        region: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        # The SDK's default waits 5 minutes to connect and retries 5 times, which would hang
        # /healthz on a dead endpoint; connect fast, but allow slow reads of large tensors.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=300),
            maxsize=16,  # worker threads share one client
            retries=urllib3.Retry(
                total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    # -- bucket

    def _ensure_bucket(self) -> None:
        # Lazily, so that building the app does not need the store up; once per instance.
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if not self._bucket_ready:
                self._create_bucket_if_missing()
                self._bucket_ready = True

    def _create_bucket_if_missing(self) -> None:
        if self._client.bucket_exists(self.bucket):
            return
        try:
            self._client.make_bucket(self.bucket)
        except S3Error as e:
            # Another process (API and workers start together) created it between our check
            # and our create: that is the outcome we wanted.
            if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    # -- writes

    def put(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        _check_s3_key(key)
        self._ensure_bucket()
        self._client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )

    def put_file(self, key: str, path: Path, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        _check_s3_key(key)
        self._ensure_bucket()
        # fput_object streams the file in multipart chunks; it never holds the whole file.
        self._client.fput_object(self.bucket, key, str(path), content_type=content_type)

    # -- reads

    def get(self, key: str) -> bytes:
        _check_s3_key(key)
        self._ensure_bucket()
        try:
            response = self._client.get_object(self.bucket, key)
        except S3Error as e:
            raise _not_found_or(e, key) from None
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def get_file(self, key: str, path: Path) -> None:
        _check_s3_key(key)
        self._ensure_bucket()
        try:
            # Downloads to "<path>.<etag>.part.minio" and renames: the target is never partial.
            self._client.fget_object(self.bucket, key, str(path))
        except S3Error as e:
            raise _not_found_or(e, key) from None

    def exists(self, key: str) -> bool:
        _check_s3_key(key)
        self._ensure_bucket()
        try:
            self._client.stat_object(self.bucket, key)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        self._ensure_bucket()
        for obj in self._client.list_objects(self.bucket, prefix=prefix or None, recursive=True):
            if not obj.is_dir and obj.object_name is not None:
                yield obj.object_name

    def list_dirs(self, prefix: str) -> Sequence[str]:
        _check_dir_prefix(prefix)
        self._ensure_bucket()
        listing = self._client.list_objects(self.bucket, prefix=prefix or None, recursive=False)
        return sorted(o.object_name for o in listing if o.is_dir and o.object_name is not None)

    def remove_abandoned_writes(self, older_than_s: float) -> int:
        # put_object is one request, or a multipart upload the server keeps until a bucket
        # lifecycle rule aborts it; objects only appear whole either way.
        return 0

    # -- deletes

    def delete(self, key: str) -> None:
        _check_s3_key(key)
        self._ensure_bucket()
        self._client.remove_object(self.bucket, key)  # S3 deletes of missing keys succeed

    def delete_prefix(self, prefix: str) -> int:
        self._ensure_bucket()
        keys = list(self.list(prefix))
        # remove_objects is lazy: the requests (1,000 keys each) run while its errors are read.
        errors = list(self._client.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
        if errors:
            first = errors[0]
            raise OSError(
                f"could not delete {len(errors)} of {len(keys)} objects under {prefix!r}; "
                f"first: {first.name}: {first.code} {first.message}"
            )
        return len(keys)

    def ping(self) -> None:
        # A real round trip (not the cached flag): /healthz must notice a store that went away.
        self._create_bucket_if_missing()
        self._bucket_ready = True

    def __repr__(self) -> str:
        return f"S3Store({self.endpoint!r}, bucket={self.bucket!r})"


def _check_s3_key(key: str) -> None:
    if not key:
        raise ValueError("object key is empty")


def _check_dir_prefix(prefix: str) -> None:
    if prefix and not prefix.endswith("/"):
        raise ValueError(f"a directory prefix ends with '/': {prefix!r}")


def _not_found_or(error: S3Error, key: str) -> Exception:
    if error.code in ("NoSuchKey", "NotFound"):
        return ObjectNotFound(key)
    return error


def make_store(settings: Settings) -> ObjectStore:
    """The store the settings ask for: S3 when KB_S3_ENDPOINT is set, else a local directory."""
    if settings.s3_endpoint:
        if not settings.s3_access_key or settings.s3_secret_key is None:
            raise ValueError(
                "KB_S3_ENDPOINT is set but KB_S3_ACCESS_KEY / KB_S3_SECRET_KEY are not"
            )
        return S3Store(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key.get_secret_value(),
            settings.s3_bucket,
            secure=settings.s3_secure,
        )
    return LocalStore(settings.store_dir)
