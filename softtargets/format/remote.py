"""Store URLs: local paths, file:// and fsspec URLs (s3://, gs://, ...). No torch.

Credentials are never passed through softtargets: fsspec/s3fs take them the usual way
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE / ~/.aws, AWS_ENDPOINT_URL for an
S3-compatible server). Error messages name the URL without any user:password part and the
exception class, never option values, so no secret reaches a log.
"""

from __future__ import annotations

import os
import re
from typing import Any

import zarr

from softtargets.errors import RemoteStoreError

# Exceptions raised by storage back ends that deserve a one-line explanation, not a traceback.
_STORAGE_MODULES = ("botocore", "aiobotocore", "s3fs", "fsspec", "gcsfs", "aiohttp", "adlfs")
_CREDENTIAL_ERRORS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                      "DefaultCredentialsError")
# A whole word: a bare "403" would match an endpoint's port (http://127.0.0.1:40321).
_DENIED = re.compile(r"\b(AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|Forbidden|403)\b")
_CONNECT = ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
            "ConnectionError", "ConnectionRefusedError")


def is_remote(url: str) -> bool:
    """True for fsspec URLs other than file://."""
    return "://" in url and not url.startswith("file://")


def local_path(url: str) -> str:
    """The filesystem path of a local path or file:// URL."""
    return url[len("file://"):] if url.startswith("file://") else url


def redact(url: str) -> str:
    """The URL without a `user:password@` part."""
    return re.sub(r"^([a-z0-9+.-]+://)[^/@]*@", r"\1***@", url)


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and e not in out and len(out) < 10:
        out.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return out


def is_storage_error(e: BaseException) -> bool:
    """Whether `e` (or its cause) comes from a remote storage back end."""
    for x in _chain(e):
        mod = type(x).__module__.split(".")[0]
        if mod in _STORAGE_MODULES or type(x).__name__ in _CREDENTIAL_ERRORS:
            return True
    return False


def explain(url: str | None, e: BaseException, *, action: str = "open") -> str:
    """A one-line message for a failed access to `url`: what failed and how to fix it."""
    where = repr(redact(url)) if url else "remote storage"
    names = [type(x).__name__ for x in _chain(e)]
    text = " ".join(str(x) for x in _chain(e))
    first = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
    if isinstance(e, ImportError) or any(n == "ImportError" for n in names):
        scheme = (url or "?://").split("://", 1)[0]
        return (f"cannot {action} {where}: no fsspec filesystem for {scheme}:// is installed "
                f"({first}); install it, e.g. pip install 'softtargets[s3]' for s3://")
    if any(n in _CREDENTIAL_ERRORS for n in names):
        return (f"cannot {action} {where}: no credentials found ({names[0]}); set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE / ~/.aws/credentials; "
                "AWS_ENDPOINT_URL for an S3-compatible server)")
    if any(n in _CONNECT for n in names):  # before "denied": its text holds the URL
        return (f"cannot {action} {where}: cannot connect to the storage endpoint "
                f"({first[:200]}); check AWS_ENDPOINT_URL / the network")
    if _DENIED.search(" ".join([text, *names])) or isinstance(e, PermissionError):
        return (f"cannot {action} {where}: access denied ({first[:200]}); check the "
                "credentials and the bucket policy")
    if "NoSuchBucket" in text or isinstance(e, FileNotFoundError):
        return (f"cannot {action} {where}: no such bucket or path ({first[:200]}); "
                "create the bucket or fix the URL")
    return f"cannot {action} {where}: {first[:300]}"


def open_group(url: str, *, mode: str, attributes: dict[str, Any] | None = None) -> zarr.Group:
    """zarr.open_group that turns a back end's failure on a remote URL into RemoteStoreError.

    Errors zarr itself raises for an existing or missing group pass through, so callers keep
    their own messages for those.
    """
    kwargs: dict[str, Any] = {} if attributes is None else {"attributes": attributes}
    # file:// goes to zarr's LocalStore (atomic temp-file writes, creates directories), not to
    # fsspec's local filesystem
    target = local_path(url) if url.startswith("file://") else url
    if is_remote(url) and mode in ("r", "r+"):
        probe(url)
    try:
        return zarr.open_group(target, mode=mode, **kwargs)  # type: ignore[arg-type]
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError,
            zarr.errors.GroupNotFoundError, FileExistsError):
        raise
    except Exception as e:
        if not is_remote(url) and not isinstance(e, ImportError):
            raise
        raise RemoteStoreError(explain(url, e)) from None


def probe(url: str) -> None:
    """One request for the group's zarr.json, so an unreachable endpoint or a credentials
    problem fails here with one line: zarr's open requests several keys at once, and the
    requests left pending by the first failure print tracebacks when the process exits."""
    fs, path = filesystem(url)
    try:
        fs.info(path.rstrip("/") + "/zarr.json")
    except FileNotFoundError:
        pass  # zarr reports the missing group
    except Exception as e:
        raise RemoteStoreError(explain(url, e)) from None


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of `url`."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except Exception as e:
        raise RemoteStoreError(explain(url, e)) from None


def store_size(url: str) -> int:
    """Bytes the store occupies (sum of its files or objects)."""
    if not is_remote(url):
        total = 0
        for root, _dirs, files in os.walk(local_path(url)):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
        return total
    fs, path = filesystem(url)
    try:
        fs.invalidate_cache()  # another process may have written since this process listed
        return int(fs.du(path, total=True))
    except Exception as e:
        raise RemoteStoreError(explain(url, e, action="measure")) from None


PARTIAL_SUFFIX = ".partial"  # zarr's LocalStore temp files; a SIGKILL mid-write leaves them


def object_sizes(url: str) -> dict[str, int]:
    """Bytes of every file/object under the store by key relative to it, e.g. "logits/c/0/0"
    (not counting temp files of killed writers); one listing, also on object storage."""
    if not is_remote(url):
        root = local_path(url)
        return {os.path.relpath(os.path.join(r, f), root).replace(os.sep, "/"):
                os.path.getsize(os.path.join(r, f))
                for r, _d, files in os.walk(root) for f in files if not f.endswith(PARTIAL_SUFFIX)}
    fs, path = filesystem(url)
    try:
        fs.invalidate_cache()
        found = fs.find(path, detail=True)
    except Exception as e:
        raise RemoteStoreError(explain(url, e, action="list")) from None
    prefix = path.rstrip("/") + "/"
    return {k[len(prefix):]: int(v.get("size") or 0) for k, v in found.items()
            if k.startswith(prefix)}


def count_objects(url: str) -> int:
    """Number of files/objects under the store (not counting temp files of killed writers)."""
    return len(object_sizes(url))

