"""Content-addressed workspace of artifacts (docs/design.md §1).

Layout: ``<root>/<kind>/<fingerprint>/`` holds one artifact; its
``manifest.json`` is written last, through a temporary name and a rename, so an
artifact is *complete* exactly when its manifest exists. Anything else under
``<kind>/`` is work in progress or debris from an interrupted run, which
``ctstore gc`` removes (unless a live process holds its lock).

The root is a local path (default ``./ctstore-data`` or ``$CTSTORE_HOME``) or an
fsspec URL (``s3://bucket/prefix``, ``memory://x``); options for remote file
systems (endpoint, credentials) come from the ``storage_options`` argument or
``$CTSTORE_STORAGE_OPTIONS`` (a JSON object). The workspace turns root and
options into one :class:`~ctstore.location.Location` (``ws.location``); each
artifact's is ``artifact.location``, and that object, never a bare URL, is what
readers, writers and Dask tasks receive, so the options reach every process.

Fingerprints are computed by :func:`ctstore.stage.fingerprint`; the artifact
handle and manifest names are in :mod:`ctstore.artifact`, the locks in
:mod:`ctstore.locks`, build-or-reuse in :mod:`ctstore.build` (re-exported here).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import re
import stat
import threading
import time

from . import __version__
from .artifact import KINDS, MANIFEST, Artifact
from .build import build_artifact
from .deletion import EXPORT_PARTIAL, EXPORT_RECORD, MARKER, ExportRecord, export_leftovers, remove_local
from .errors import CtstoreError, one_line
from .location import Location, probe
from .locks import ArtifactLock, lock_owner_alive
from .log import log
from .manifest import relative_name_problem
from .manifest import problem as manifest_problem

__all__ = ["Artifact", "KINDS", "Workspace", "build_artifact"]


class Workspace:
    """A directory (local or fsspec URL) of content-addressed artifacts."""

    scratch_url: str | None = None  # --scratch: where jobs' scratch goes instead of <workspace>/tmp

    def __init__(self, root: str | None = None, storage_options: dict | None = None):
        root = root or os.environ.get("CTSTORE_HOME") or "ctstore-data"
        options = storage_options if storage_options is not None else _env_storage_options()
        try:
            self.location = Location.of(root, options)
            self.fs = self.location.fs
        except (ImportError, ValueError) as exc:
            raise CtstoreError(f"workspace {root}: cannot open ({exc})") from None
        self.storage_options = self.location.storage_options
        self.is_local = self.location.is_local
        self.root = self.location.path
        self.url = self.location.url
        if self.is_local and os.path.exists(self.root) and not os.path.isdir(self.root):
            raise CtstoreError(f"workspace {root}: exists and is not a directory")
        new = self.is_local and not os.path.exists(self.root)
        probe(self.location)  # an object store: bad options, no credentials or no endpoint fail here, quickly
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            if new:  # ctstore created it: it is a workspace
                self.mark()
        except (FileExistsError, NotADirectoryError):
            raise CtstoreError(f"workspace {root}: a path component is a file") from None
        except PermissionError:
            raise CtstoreError(f"workspace {root}: permission denied") from None

    # -- the workspace marker ------------------------------------------------------------
    @property
    def marker(self) -> Location:
        return self.location.child(MARKER)

    def is_marked(self) -> bool:
        try:
            return self.marker.exists()
        except OSError:
            return False

    def mark(self) -> None:
        """Write ``<root>/.ctstore-workspace`` (once): what ``gc`` requires before it deletes anything here."""
        if not self.is_marked():
            self.marker.write_atomic(json.dumps({"ctstore_workspace": 1, "created_by": __version__}).encode())

    def require_marker(self, action: str) -> None:
        if not self.is_marked():
            raise CtstoreError(
                f"{one_line(self.url)}: not a ctstore workspace (no {MARKER} marker), so {action} removes "
                f"nothing; if it is a workspace written by an older ctstore, mark it with "
                f"`touch {one_line(self.marker.url)}` (any stage run in it also marks it)")

    # -- paths ---------------------------------------------------------------------------
    def artifact_path(self, kind: str, fp: str) -> str:
        return f"{self.root}/{kind}/{fp}"

    def artifact_url(self, kind: str, fp: str) -> str:
        return self.artifact_location(kind, fp).url

    def artifact_location(self, kind: str, fp: str) -> Location:
        """Where artifact ``kind/fp`` lives, with the workspace's storage options (hand this to tasks)."""
        return self.location.child(kind, fp)

    def scratch_dir(self, kind: str, fp: str) -> str:
        """Local directory for spill files of a job; inside the workspace when it is local."""
        if self.is_local:
            base = os.path.join(self.root, "tmp")
        else:
            base = os.path.join(os.environ.get("TMPDIR", "/tmp"), "ctstore-scratch")
        path = os.path.join(base, f"{kind}-{fp}")
        os.makedirs(path, exist_ok=True)
        return path

    def scratch_location(self, kind: str, fp: str) -> Location:
        """Where the tasks of job ``kind/fp`` put scratch pieces, reachable by every worker (hand this to tasks).

        ``<workspace>/tmp/<kind>-<fp>`` (local or remote, with the workspace's
        storage options), or under ``scratch_url`` / ``$CTSTORE_SCRATCH`` when
        set; see :mod:`ctstore.formats.scratch`.
        """
        from .formats.scratch import scratch_root

        return scratch_root(self).child(f"{kind}-{fp}")

    # -- lookup --------------------------------------------------------------------------
    def find(self, kind: str, fp: str) -> Artifact | None:
        """The complete artifact ``kind/fp``, or None; an unreadable manifest is a one-line error."""
        manifest, problem = self.read_manifest(kind, fp)
        if problem is not None:
            raise CtstoreError(f"{problem}; `ctstore gc --unreadable` removes it")
        return None if manifest is None else Artifact(self, kind, fp, manifest)

    def read_manifest(self, kind: str, fp: str) -> tuple[dict | None, str | None]:
        """``(manifest, None)``, ``(None, None)`` when there is none, or ``(None, problem)`` when it is unreadable.

        Unreadable: not UTF-8 JSON (a truncated write, a damaged disk), not a JSON
        object (``null``), or one naming another artifact. One such manifest
        must not take the rest of the workspace down, so :meth:`list` skips it
        and :meth:`unreadable` reports it.
        """
        if kind not in KINDS or relative_name_problem(fp, plain=True) is not None:  # never a path
            return None, f"{one_line(kind)}/{one_line(fp)}: not a kind and a fingerprint"
        path = f"{self.artifact_path(kind, fp)}/{MANIFEST}"
        try:
            with self._open_manifest(path) as f:
                manifest = json.loads(f.read(MAX_MANIFEST_BYTES + 1).decode("utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            return None, f"{one_line(path)}: manifest is not valid JSON ({one_line(str(exc).splitlines()[0])})"
        except IsADirectoryError:
            return None, f"{one_line(path)}: manifest is a directory"
        except PermissionError:
            return None, f"{one_line(path)}: manifest cannot be read (permission denied)"
        except _NotRegular as exc:
            return None, f"{one_line(path)}: manifest {exc}"
        except OSError as exc:
            return None, f"{one_line(path)}: manifest cannot be read ({one_line(exc.strerror or exc)})"
        if not isinstance(manifest, dict):
            what = {type(None): "null", str: "a string", list: "a list", bool: "a boolean"}.get(
                type(manifest), "a number")
            return None, f"{one_line(path)}: manifest is {what}, not a JSON object"
        if manifest.get("kind", kind) != kind or manifest.get("fingerprint", fp) != fp:
            return None, (f"{one_line(path)}: manifest describes {manifest.get('kind')}/"
                          f"{manifest.get('fingerprint')}, not {kind}/{fp}")
        problem = manifest_problem(manifest, kind)
        if problem is not None:
            return None, f"{one_line(path)}: manifest is invalid: {one_line(problem)}"
        return manifest, None

    def _open_manifest(self, path: str):
        """The manifest, opened without following a symlink and only if it is a regular file (never a FIFO)."""
        if not self.is_local:
            return self.fs.open(path, "rb")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _NotRegular("is a symbolic link") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _NotRegular("is not a regular file")
        return os.fdopen(fd, "rb")

    def unreadable(self, kind: str | None = None) -> list[tuple[str, str, str]]:
        """``(kind, fingerprint, problem)`` of every artifact whose manifest exists but cannot be used."""
        out = []
        for k in [kind] if kind else KINDS:
            for fp in self._children(f"{self.root}/{k}"):
                _, problem = self.read_manifest(k, fp)
                if problem is not None:
                    out.append((k, fp, problem))
        return out

    def get(self, ref: str, kind: str | None = None) -> Artifact:
        """Resolve ``FP``, a unique prefix of one, or ``kind/FP`` (as typed on the command line).

        Never a path: a reference is looked up in this workspace's listing, so it
        cannot reach a directory outside it. Code that follows a manifest's
        ``inputs`` passes full fingerprints (the manifest schema guarantees them).
        """
        text = ref.rstrip("/")
        fp = text
        if "/" in text:
            kind_part, fp = text.split("/", 1)
            if kind_part not in KINDS:
                raise CtstoreError(f"{one_line(ref)}: not a fingerprint, a prefix of one or <kind>/<fingerprint> "
                                   f"(kinds: {', '.join(KINDS)}; paths are not accepted)")
            if kind and kind_part != kind:
                raise CtstoreError(f"{one_line(ref)}: is a {kind_part} reference, expected {kind}")
            kind = kind_part
        if _FP_PREFIX.fullmatch(fp) is None:
            raise CtstoreError(f"{one_line(ref)}: not a fingerprint or a prefix of one (1 to 20 of 0-9a-f; "
                               "paths are not accepted)")
        matches = [a for a in self.list(None) if a.fingerprint.startswith(fp)]
        if not matches:
            broken = [p for k, f, p in self.unreadable() if f.startswith(fp) and (kind is None or k == kind)]
            if broken:
                more = f" (and {len(broken) - 1} more matching {one_line(fp)})" if len(broken) > 1 else ""
                raise CtstoreError(f"{broken[0]}{more}; `ctstore gc --unreadable` removes it")
            raise CtstoreError(f"{one_line(ref)}: no complete {kind or 'artifact'} with this fingerprint in "
                               f"{one_line(self.url)}")
        if len(matches) > 1:
            raise CtstoreError(f"{one_line(ref)}: ambiguous prefix, matches {', '.join(str(a) for a in matches)}")
        return self._checked(matches[0], kind, ref)

    @staticmethod
    def _checked(artifact: Artifact, kind: str | None, ref: str) -> Artifact:
        if kind and artifact.kind != kind:
            raise CtstoreError(f"{one_line(ref)}: is a {artifact.kind} artifact, expected {kind}")
        return artifact

    def list(self, kind: str | None = None) -> list[Artifact]:
        """Complete artifacts (an unreadable manifest is skipped; see :meth:`unreadable`)."""
        out = []
        for k in [kind] if kind else KINDS:
            for fp in self._children(f"{self.root}/{k}"):
                manifest, _ = self.read_manifest(k, fp)
                if manifest is not None:
                    out.append(Artifact(self, k, fp, manifest))
        return sorted(out, key=lambda a: (KINDS.index(a.kind), _created(a.manifest)))

    def incomplete(self) -> list[str]:
        """Paths under the workspace that are not complete artifacts (no manifest at all)."""
        out = []
        for k in KINDS:
            for name in self._children(f"{self.root}/{k}"):
                if not self._has_manifest(k, name) and not self._locked(k, name):
                    out.append(f"{self.root}/{k}/{name}")
        return out

    def _has_manifest(self, kind: str, fp: str) -> bool:
        try:
            return self.fs.exists(f"{self.artifact_path(kind, fp)}/{MANIFEST}")
        except OSError:
            return False

    def _children(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(os.path.basename(e.rstrip("/")) for e in entries)

    # -- writing -------------------------------------------------------------------------
    def prepare(self, kind: str, fp: str, *, keep_partial: bool = False) -> str:
        """Create the directory an artifact is written into and return its path.

        A leftover incomplete directory is removed unless ``keep_partial`` (a
        stage that resumes from its own partial output asks for that).
        """
        self.mark()  # writing makes it a workspace (a workspace of an older ctstore gets its marker here)
        path = self.artifact_path(kind, fp)
        if self.fs.exists(path) and not keep_partial:
            self.fs.rm(path, recursive=True)
        self.fs.makedirs(path, exist_ok=True)
        return path

    def remove(self, kind: str, fp: str) -> None:
        path = self.artifact_path(kind, fp)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def replace(self, kind: str, fp: str) -> threading.Thread | None:
        """Take an artifact out of the way at once, to be rebuilt (``--force``), and remove it on a thread
        (join it before the process ends): a local one is renamed into ``tmp/replaced-<kind>-<fp>-<pid>``,
        which ``gc`` removes if the removal is cut short. Unlinking a count store of 1.4 GB took ~1 s
        here, which the rebuild no longer waits for. A remote artifact, or one whose disk has less free
        than twice its size and 1 GiB besides (the rebuild may need its room), is removed before this
        returns."""
        path = self.artifact_path(kind, fp)
        if not self.is_local or not _room_to_rebuild_beside(path):
            self.remove(kind, fp)
            return None
        aside = os.path.join(self.root, "tmp", f"replaced-{kind}-{fp}-{os.getpid()}")
        try:
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            if not self._removable(aside):  # a tmp/ linked out of the workspace: nothing is removed there
                raise OSError(errno.EXDEV, "tmp/ leads out of the workspace")
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        except OSError:  # another file system under tmp/, or a leftover of the same name: remove in place
            self.remove(kind, fp)
            return None

        def remove():
            try:
                remove_local(aside)
            except OSError:
                pass  # what is left lies in tmp/, where gc removes it

        thread = threading.Thread(target=remove, name="ctstore-remove-replaced", daemon=True)
        thread.start()
        return thread

    def publish(self, kind: str, fp: str, manifest: dict) -> Artifact:
        """Write ``manifest.json`` last and atomically: the artifact becomes complete."""
        manifest = {
            "kind": kind,
            "fingerprint": fp,
            "ctstore_version": __version__,
            "created": time.time(),
            **manifest,
        }
        manifest["path"] = self.artifact_url(kind, fp)
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        self.artifact_location(kind, fp).child(MANIFEST).write_atomic(data)
        return Artifact(self, kind, fp, manifest)

    # -- locks (local workspaces) ---------------------------------------------------------
    def lock(self, kind: str, fp: str, timeout: float = 24 * 3600) -> ArtifactLock:
        return ArtifactLock(self, kind, fp, timeout, self._lock_path(kind, fp))

    def _lock_path(self, kind: str, fp: str) -> str:
        return f"{self.root}/.locks/{kind}-{fp}.lock"

    def _locked(self, kind: str, fp: str) -> bool:
        if not self.is_local:
            return False
        return lock_owner_alive(self._lock_path(kind, fp))

    def scratch_lock(self, name: str, timeout: float = 24 * 3600) -> ArtifactLock:
        """Exclusive lock on the scratch area ``<workspace>/tmp/<name>`` (gc leaves a locked one alone)."""
        return ArtifactLock(self, "scratch", name, timeout, self._scratch_lock_path(name))

    def _scratch_lock_path(self, name: str) -> str:
        return f"{self.root}/.locks/{name}.lock"

    def _scratch_locked(self, name: str) -> bool:
        return self.is_local and lock_owner_alive(self._scratch_lock_path(name))

    # -- maintenance ---------------------------------------------------------------------
    def gc(self, dry_run: bool = False, unreadable: bool = False) -> list[str]:
        """Remove incomplete artifacts and stale scratch; never touches locked ones.

        ``unreadable=True`` also removes artifacts whose manifest exists but cannot
        be read (they are kept otherwise: the data may still be worth rescuing).

        Deletion rules (docs/reliability.md): nothing is removed from a directory
        without the workspace marker; nothing is removed through a symbolic link
        (a ``tmp``, ``.locks`` or ``<kind>`` directory that is a link leading
        elsewhere is left alone and named; a link itself is unlinked, never
        followed); an export's leftover ``OUT.partial-*`` is removed only when its
        export is not running and the workspace recorded it.
        """
        self.require_marker("gc")
        victims = self.incomplete()
        if unreadable:
            victims += [self.artifact_path(k, fp) for k, fp, _ in self.unreadable() if not self._locked(k, fp)]
        if self.is_local:
            tmp = os.path.join(self.root, "tmp")
            for name in self._children(tmp):
                if self._scratch_locked(name):  # also <kind>-<fp>: the lock of the artifact being built
                    continue
                if name.startswith(EXPORT_RECORD) and self._removable(os.path.join(tmp, name)):
                    victims += export_leftovers(os.path.join(tmp, name))
                victims.append(os.path.join(tmp, name))
            for name in self._children(f"{self.root}/.locks"):
                if not lock_owner_alive(f"{self.root}/.locks/{name}"):
                    victims.append(f"{self.root}/.locks/{name}")
            inside, outside = [], []
            for path in victims:
                (inside if self._removable(path) else outside).append(path)
            for path in outside:
                log(f"gc: {one_line(path)} is reached through a symbolic link leading out of the workspace; "
                    "left alone")
            victims = inside
        else:  # remote scratch holds no locks: stale when its artifact is complete or it lies untouched
            from .formats.scratch import scratch_root, stale_entries

            root = scratch_root(self)
            if not root.is_local:
                victims += [e.path for e in stale_entries(root, self._has_manifest)]
        if not dry_run:
            for path in victims:
                try:
                    if self.is_local:
                        remove_local(path)
                    else:
                        self.fs.rm(path, recursive=True)
                except FileNotFoundError:
                    pass
        return victims

    def _removable(self, path: str) -> bool:
        """True when removing ``path`` cannot touch anything outside the workspace (local only).

        Its parent directory must really be inside the workspace (no symlinked
        ``tmp``/``.locks``/``<kind>``); ``path`` itself may be a link (only the link
        is removed). An export leftover lies outside by design; :func:`~ctstore.deletion.export_leftovers`
        checked it.
        """
        if EXPORT_PARTIAL.search(os.path.basename(path)) and not path.startswith(self.root + "/"):
            return True
        base = os.path.realpath(self.root)
        parent = os.path.realpath(os.path.dirname(path))
        return parent == base or parent.startswith(base + os.sep)

    # -- exports (their partial output lies outside the workspace) ---------------------------
    def export_record(self, out_dir: str):
        """Context manager held while an export writes ``out_dir.partial-*``: a killed export's leftover is
        then known to ``gc`` (a scratch lock + ``tmp/export-<hash>`` naming ``out_dir``)."""
        return ExportRecord(self, out_dir)


def _room_to_rebuild_beside(path: str) -> bool:
    """Whether the disk under ``path`` keeps room for a rebuild while the old artifact is still being removed."""
    from .formats.scratch import tree_bytes

    try:
        return shutil.disk_usage(path).free >= 2 * tree_bytes(Location.of(path)) + (1 << 30)
    except OSError:
        return False


MAX_MANIFEST_BYTES = 256 << 20  # a manifest lists one hash per file; far below this even for huge stores
_FP_PREFIX = re.compile(r"[0-9a-f]{1,20}")


class _NotRegular(Exception):
    """The manifest path is a symlink, FIFO, device or socket: never opened for reading."""


def _created(manifest: dict) -> float:
    value = manifest.get("created", 0)
    return float(value) if isinstance(value, (int, float)) else 0.0


def _env_storage_options() -> dict:
    """fsspec options from ``$CTSTORE_STORAGE_OPTIONS`` (a JSON object; unset or empty: none)."""
    text = os.environ.get("CTSTORE_STORAGE_OPTIONS", "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise CtstoreError(f"CTSTORE_STORAGE_OPTIONS: not valid JSON ({one_line(exc)})") from None
    if not isinstance(options, dict):
        raise CtstoreError("CTSTORE_STORAGE_OPTIONS: must be a JSON object of fsspec options")
    return options


