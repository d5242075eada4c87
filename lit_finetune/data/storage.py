"""Local folders and object-storage URLs (``s3://``, ``gs://``, ``r2://``) for shards: small files in and out.

LitData moves the shards themselves; this module reads and writes the one small metadata file beside them and
checks whether an output already holds data, through LitData's own storage clients (``litdata.streaming.fs_provider``)
so that credentials and endpoints are resolved exactly as LitData resolves them when streaming:

- S3 and S3-compatible servers (MinIO, Ceph, a local test server): boto3's environment variables
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` (or the shared
  ``~/.aws`` files), or ``storage_options={"endpoint_url": ..., "aws_access_key_id": ..., ...}`` (keyword
  arguments of ``boto3.client("s3", ...)``), which win over the environment.
- Google Cloud Storage: ``GOOGLE_APPLICATION_CREDENTIALS`` or ``storage_options`` of ``google.cloud.storage.Client``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REMOTE_SCHEMES = ("s3", "gs", "r2")
"""URL schemes that ``lit-finetune optimize`` can write to and the streaming data modules can read from."""


def is_remote(location: str) -> bool:
    """Whether ``location`` is an object-storage URL (``s3://bucket/prefix``) rather than a local folder."""
    return urlparse(str(location)).scheme in REMOTE_SCHEMES


def join(location: str, *parts: str) -> str:
    """``location`` and ``parts`` joined with ``/`` (URLs) or as a local path."""
    if is_remote(location):
        return "/".join([str(location).rstrip("/"), *parts])
    return str(Path(location, *parts))


def _provider(url: str, storage_options: dict[str, Any] | None) -> Any:
    # LitData's own client for the URL's scheme: the same credential and endpoint resolution as its streaming.
    from litdata.streaming.fs_provider import _get_fs_provider

    return _get_fs_provider(url, dict(storage_options or {}))


def exists(location: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether the file ``location`` exists."""
    if not is_remote(location):
        return Path(location).is_file()
    return _provider(location, storage_options).exists(location)


def is_empty(location: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether the folder or prefix ``location`` is absent or holds nothing."""
    if not is_remote(location):
        path = Path(location)
        return not path.exists() or (path.is_dir() and not any(path.iterdir()))
    return _provider(location, storage_options).is_empty(location)


def write_json(location: str, content: dict[str, Any], storage_options: dict[str, Any] | None = None) -> None:
    """Write ``content`` as JSON to the file ``location`` (uploaded from a temporary file for a URL)."""
    text = json.dumps(content, indent=2, sort_keys=True)
    if not is_remote(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_text(text)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "metadata.json")
        Path(local).write_text(text)
        _provider(location, storage_options).upload_file(local, location)


def read_json(location: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON content of the file ``location`` (downloaded to a temporary file for a URL)."""
    if not is_remote(location):
        return json.loads(Path(location).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "metadata.json")
        _provider(location, storage_options).download_file(location, local)
        return json.loads(Path(local).read_text())


def endpoint_url(storage_options: dict[str, Any] | None = None) -> str | None:
    """The S3 endpoint in use: ``storage_options["endpoint_url"]``, else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``."""
    options = storage_options or {}
    return options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def allow_plain_http(storage_options: dict[str, Any] | None = None) -> None:
    """Let LitData's fast S3 path (obstore) reach an ``http://`` endpoint, as boto3 does.

    LitData builds obstore's ``S3Store`` with fixed client options that lack ``allow_http``; obstore then refuses
    every ``http://`` endpoint (a local MinIO, a test server) with "HTTP error: builder error", while LitData's
    boto3 path would work. Where the configured endpoint is ``http://``, ``allow_http`` is added to those options
    (a module-level dict of LitData, read when a store is built: in this process and in forked loader workers).
    """
    url = endpoint_url(storage_options)
    if not url or not url.startswith("http://"):
        return
    try:
        from litdata.streaming import downloader
    except ImportError:
        return
    options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
    if isinstance(options, dict):
        options["allow_http"] = True
