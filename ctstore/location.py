"""Where something is stored: a URL plus the fsspec options needed to reach it.

A :class:`Location` is created once (by the :class:`~ctstore.workspace.Workspace`)
and handed to everything that reads or writes, Dask tasks included: it pickles
as its URL and options, never as an open filesystem, so a worker process
reaches an object store with the same credentials and endpoint as the client.

It also owns the one way ctstore makes an output visible only when complete:
write under a temporary sibling name, then rename (:func:`atomic_path`,
:meth:`Location.write_atomic`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import fsspec

__all__ = ["Location", "atomic_path", "probe", "remote_error", "replace"]

PROBE_TIMEOUT_S = 5  # connect timeout of the first request to an object store; one attempt, no retries


def _protocols(fs) -> tuple:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


@dataclass(frozen=True)
class Location:
    """A file or directory: ``url`` (a local path or ``proto://...``) and its ``storage_options``."""

    url: str
    storage_options: dict = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def of(cls, url: str, storage_options: dict | None = None) -> "Location":
        """The location of ``url``; a local path becomes absolute."""
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        if "file" in _protocols(fs):
            return cls(os.path.abspath(path), {})
        return cls(fs.unstrip_protocol(path.rstrip("/")), dict(storage_options or {}))

    def __reduce__(self):  # pickle the address, not the open filesystem
        return (Location, (self.url, self.storage_options))

    @cached_property
    def fs(self):
        return fsspec.core.url_to_fs(self.url, **self.storage_options)[0]

    @cached_property
    def path(self) -> str:
        """The path within :attr:`fs` (the URL without its protocol)."""
        return fsspec.core.url_to_fs(self.url, **self.storage_options)[1].rstrip("/") or "/"

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def zarr_options(self) -> dict | None:
        """``storage_options`` for zarr: None for a local path (zarr refuses options there)."""
        return None if self.is_local else (self.storage_options or None)

    def child(self, *names: str) -> "Location":
        return Location("/".join([self.url.rstrip("/"), *names]), self.storage_options)

    def __str__(self) -> str:
        return self.url

    # -- reading and writing -------------------------------------------------------------
    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def open(self, mode: str = "rb"):
        return self.fs.open(self.path, mode)

    def read_bytes(self) -> bytes:
        with self.open("rb") as f:
            return f.read()

    def write_atomic(self, data: bytes) -> None:
        """Write ``data`` under a temporary name, then rename it here: readers see all of it or nothing."""
        with atomic_path(self) as tmp:
            with tmp.open("wb") as f:
                f.write(data)

    def open_group(self, mode: str = "r"):
        import zarr

        return zarr.open_group(self.url, mode=mode, storage_options=self.zarr_options)

    def open_array(self, mode: str = "r"):
        import zarr

        return zarr.open_array(self.url, mode=mode, storage_options=self.zarr_options)


def probe(location: Location) -> None:
    """Reach a remote location once, quickly: a bad option, missing credentials or an endpoint that is down
    become one line (:func:`remote_error`) in seconds instead of tracebacks after half a minute of retries.

    The probe uses its own file system with bounded retries and timeouts; the
    location's options (and so every later request) are left as the user gave them.
    """
    if location.is_local:
        return
    options = dict(location.storage_options)
    protocol = location.url.split("://", 1)[0]
    if protocol in ("s3", "s3a"):
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("connect_timeout", PROBE_TIMEOUT_S)
        config.setdefault("read_timeout", 3 * PROBE_TIMEOUT_S)
        config.setdefault("retries", {"max_attempts": 1})
        options["config_kwargs"] = config
    try:
        options["skip_instance_cache"] = True  # its own instance: the bounded timeouts stay with the probe
        fs, path = fsspec.core.url_to_fs(location.url, **options)
        if isinstance(getattr(fs, "retries", None), int):
            fs.retries = 1  # s3fs retries each call 5 times with back-off of its own
        fs.exists(path)
    except Exception as exc:  # noqa: BLE001 - each object store raises its own types; all become one line
        raise remote_error(location.url, exc) from None


def remote_error(url: str, exc: BaseException):
    """A one-line :class:`~ctstore.errors.CtstoreError` for a failure to reach an object store."""
    from .errors import CtstoreError, one_line

    name, text = type(exc).__name__, " ".join(str(exc).split())
    if isinstance(exc, TypeError) and "unexpected keyword argument" in text:
        option = text.rsplit("argument", 1)[-1].strip()
        return CtstoreError(f"{one_line(url)}: storage option {one_line(option)} is not accepted by this file "
                            "system (check CTSTORE_STORAGE_OPTIONS)")
    if name in ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError"):
        return CtstoreError(f"{one_line(url)}: no credentials for the object store (set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY, or key and secret in CTSTORE_STORAGE_OPTIONS)")
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text:
        return CtstoreError(f"{one_line(url)}: access denied by the object store ({one_line(text[:200])})")
    if "Endpoint" in name or "Connect" in name or "Timeout" in name or isinstance(exc, (OSError, TimeoutError)):
        return CtstoreError(f"{one_line(url)}: cannot reach the object store ({one_line(text[:200] or name)})")
    return CtstoreError(f"{one_line(url)}: cannot open ({name}: {one_line(text[:200])})")


def replace(src: Location, dst: Location) -> None:
    """Rename ``src`` to ``dst`` (file or directory), replacing a file ``dst``; atomic on a local disk."""
    if src.is_local:
        os.replace(src.path, dst.path)
    else:  # object stores have no rename: copy then delete, and readers rely on manifests written last
        src.fs.mv(src.path, dst.path, recursive=True)


@contextmanager
def atomic_path(final: Location | str, *, keep_on_error: bool = False):
    """Yield a temporary sibling of ``final``; on success rename it to ``final``, on failure remove it.

    Works for a file or a directory the caller creates at the yielded location.
    ``final`` may be a local path (then a local path is yielded and renamed).
    A directory already at ``final`` is not replaced (``os.replace`` refuses a
    non-empty one): the caller decides what an existing output means.
    """
    as_path = isinstance(final, str)
    final_loc = Location.of(final) if as_path else final
    tmp = Location(f"{final_loc.url}.partial-{uuid.uuid4().hex[:8]}", final_loc.storage_options)
    try:
        yield tmp.path if as_path else tmp
        replace(tmp, final_loc)
    except BaseException:
        if not keep_on_error:
            _remove(tmp)
        raise


def _remove(loc: Location) -> None:
    try:
        if loc.is_local:
            if os.path.isdir(loc.path) and not os.path.islink(loc.path):
                shutil.rmtree(loc.path, ignore_errors=True)
            else:
                os.remove(loc.path)
        elif loc.fs.exists(loc.path):
            loc.fs.rm(loc.path, recursive=True)
    except FileNotFoundError:
        pass
