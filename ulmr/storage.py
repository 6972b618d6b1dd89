"""Where results go, safely: writable folders, model identities and folder names, per-item claims.

    check_writable(results_dir, what="--results-dir")   # before any work: one line if it cannot be
    identity = model_identity(spec)                      # {"spec", "kind", "name", "source", "weights"}
    folder = results_dir / model_slug(identity)          # "smollm2-135m", "ckpt-1a2b3c4d", "org--name"
    for item in claimed(items, path_of, done):           # items no other live process works on
        ...                                              # the work; the claim is held meanwhile

Claims are exclusive `fcntl.flock` locks on `<result>.lock` beside each result file. The kernel
drops a flock when its process dies, however it dies, so a killed run never leaves a lock that
blocks the next one. Linux and macOS; on local disks and on NFS (Linux emulates flock there with
byte-range locks). Where `fcntl` is missing (Windows) every claim is granted: no sharing, as before.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from ulmr.errors import UlmrError

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows)
    fcntl = None

T = TypeVar("T")


# --- writable folders ----------------------------------------------------------------------------

def check_writable(path: str | os.PathLike, what: str = "folder") -> Path:
    """Create the folder `path` if missing and prove it accepts a file (one byte written, then
    removed). Raises a one-line UlmrError naming `what` and the folder when it does not: a file in
    the way, no permission, a read-only file system, a full disk. Returns the folder."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".ulmr-write-check-")
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise UlmrError(f"{what} {path} is not writable ({_why_not_writable(exc, path)}): "
                        "pass a folder you can write to") from None
    return path


def _why_not_writable(exc: OSError, path: Path) -> str:
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        return f"a file is in the way at {blocker}" if blocker else "a file is in the way"
    reasons = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
               errno.EDQUOT: "disk quota exceeded"}
    return reasons.get(exc.errno, exc.strerror or type(exc).__name__)


# --- model identity ------------------------------------------------------------------------------

_FINGERPRINTS: dict[tuple, str] = {}


# A prepared checkpoint's record of how it was made (timings included): beside the model, not
# part of it.
PREPARATION_RECORD = "prepare.json"


def weights_fingerprint(model_path: str) -> str:
    """SHA-256 of a checkpoint folder's config and weight files (*.json but PREPARATION_RECORD, and
    *.safetensors; *.bin weights where the folder has no safetensors); a path that is not a folder
    (a hub id) is returned as is. Cached per process by the files' names, sizes and modification
    times, so a large checkpoint is read once however often it is asked for, and again only once it
    changes."""
    folder = Path(model_path)
    if not folder.is_dir():
        return model_path
    files = ([f for f in sorted(folder.glob("*.json")) if f.name != PREPARATION_RECORD]
             + sorted(folder.glob("*.safetensors")))
    if not any(f.suffix == ".safetensors" for f in files):
        files += sorted(folder.glob("*.bin"))
    stats = tuple((f.name, st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()])
    cache_key = (str(folder.resolve()), stats)
    if cache_key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode())
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
        _FINGERPRINTS[cache_key] = digest.hexdigest()
    return _FINGERPRINTS[cache_key]


def model_identity(spec: str | None) -> dict[str, Any]:
    """What a model spec names, for results and their folders:

    spec     the spec as given (None: the default alias)
    kind     "alias" (a built-in alias, or a folder that is an alias's cached build),
             "local" (a checkpoint folder) or "hub" (a hub id)
    name     alias name, the folder's last name, or the hub id
    source   the resolved absolute folder, or the hub id
    weights  weights_fingerprint of the folder; None for a hub id

    Building an alias (once per machine) and bad specs fail as `ulmr.models.resolve_model` does."""
    from ulmr.models import ALIASES, DEFAULT_MODEL, cache_dir, resolve_model

    spec = spec or DEFAULT_MODEL
    source = resolve_model(spec)
    if not Path(source).is_dir():
        return {"spec": spec, "kind": "hub", "name": spec, "source": spec, "weights": None}
    folder = Path(source).resolve()
    alias = spec if spec in ALIASES else next(
        (a for a in ALIASES if (cache_dir() / "models" / a).resolve() == folder), None)
    return {"spec": spec, "kind": "alias" if alias else "local", "name": alias or folder.name,
            "source": str(folder), "weights": weights_fingerprint(str(folder))}


def model_slug(identity: dict[str, Any]) -> str:
    """A file-safe, readable folder name for a model_identity: the alias itself ("smollm2-135m"),
    a local folder's last name and the first 8 hex digits of its weights hash ("ckpt-1a2b3c4d": two
    different checkpoints both called ckpt get different folders, the same weights the same one),
    or a hub id with "/" as "--" ("HuggingFaceTB--SmolLM2-135M")."""
    if identity["kind"] == "alias":
        return _file_safe(identity["name"])
    if identity["kind"] == "local":
        return f"{_file_safe(identity['name'])}-{identity['weights'][:8]}"
    return _file_safe(identity["source"].replace("/", "--"))


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:80] or "model"


# --- claims on result items ----------------------------------------------------------------------

def lock_path(result: str | os.PathLike) -> Path:
    """The lock file of a result file: `<result>.lock` beside it."""
    result = Path(result)
    return result.with_name(result.name + ".lock")


class Claim:
    """An exclusive claim on one result item (an flock on its lock file), or the news that another
    live process holds it (`held` False). A context manager: leaving it releases the claim."""

    def __init__(self, result: str | os.PathLike, fd: int | None, held: bool):
        self.path = Path(result)
        self.lock_path = lock_path(result)
        self._fd = fd
        self.held = held

    def release(self) -> None:
        """Remove the lock file (while still holding it), then let go. Safe to call twice."""
        if self._fd is None:
            return
        try:
            if _same_file(self.lock_path, self._fd):
                self.lock_path.unlink()
        except OSError:
            pass  # a lock file left behind blocks nobody: the next claimant locks it again
        finally:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None
            self.held = False

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Claim({str(self.path)!r}, held={self.held})"


def try_claim(result: str | os.PathLike) -> Claim:
    """Claim `result` now if no other live process holds it. Check `.held`; use as a context
    manager (or call `.release()`) either way. Claims are per open file, so a second claim of the
    same item in the same process (another thread, another loop) is refused too."""
    fd = _lock(lock_path(result), blocking=False)
    return Claim(result, fd, held=fd is not None)


def wait_claim(result: str | os.PathLike, timeout: float | None = None, poll_s: float = 0.5) -> Claim:
    """Claim `result`, waiting while another live process holds it (a process that dies lets go at
    once). With a timeout, raises a one-line UlmrError naming the holder when it runs out."""
    target = lock_path(result)
    if timeout is None:
        return Claim(result, _lock(target, blocking=True), held=True)
    deadline = time.monotonic() + timeout
    while True:
        fd = _lock(target, blocking=False)
        if fd is not None:
            return Claim(result, fd, held=True)
        if time.monotonic() >= deadline:
            holder = claim_holder(result)
            who = f"process {holder}" if holder else "another process"
            raise UlmrError(f"{result} is still being produced by {who} after {timeout:g}s: "
                            "wait for it to finish, or stop it")
        time.sleep(poll_s)


def claim_holder(result: str | os.PathLike) -> int | None:
    """The process id written into a result's lock file by its holder, if it can be read (for
    messages only: the lock, not this number, decides who holds the item)."""
    try:
        return int(lock_path(result).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def claimed(items: Iterable[T], path_of: Callable[[T], str | os.PathLike],
            done: Callable[[T], bool]) -> Iterator[T]:
    """The items this process should work on, each yielded while its claim is held (released when
    the loop moves on, or ends by break or exception). Items already `done` are skipped; items
    another live process holds are put off, and after the rest this waits for their holders and
    skips those they finished (those they did not, e.g. a killed run's, are then claimed here).
    `done(item)` is asked again once the claim is held, so an item finished meanwhile is skipped.

        for item in claimed(items, lambda i: i.path, lambda i: read_stored(i.path, i.key) is not None):
            write_json_atomic(item.path, compute(item))
    """
    pending = list(items)
    while pending:
        later = []
        for item in pending:
            if done(item):
                continue
            with try_claim(path_of(item)) as mine:
                if not mine.held:
                    later.append(item)
                    continue
                if done(item):
                    continue
                yield item
        if later:  # all held elsewhere: wait until the first is let go, then look at them all again
            wait_claim(path_of(later[0])).release()
        pending = later


@contextlib.contextmanager
def claim(result: str | os.PathLike, wait: bool = True, timeout: float | None = None) -> Iterator[Claim]:
    """`with claim(path) as c:` waits for the item (wait=True) and holds it inside the block; with
    wait=False, `c.held` says whether this process got it. Released on leaving the block."""
    held = wait_claim(result, timeout) if wait else try_claim(result)
    with held:
        yield held


def _lock(target: Path, blocking: bool) -> int | None:
    """An open descriptor holding an exclusive flock on `target` (created if missing), or None
    when another open file holds it and blocking is False."""
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is None:  # pragma: no cover
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        # The previous holder removes the file before it lets go: a lock on a file no longer at
        # `target` guards nothing, so open the current one and try again.
        if not _same_file(target, fd):
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
