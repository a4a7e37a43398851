"""Disk tier: one safetensors file per chunk, written atomically, verified on every read.

Files: <root>/<key[:2]>/<key>.safetensors (format in entry_format.py). A write goes to a temp file
named .<key>.<pid>.<random>.tmp in the same directory, is fsync'd, renamed over the final name
(atomic on POSIX) and the directory is fsync'd. A process killed at any point leaves either the
old file, the new file, or a stray temp file (never read; swept at open once its writer is dead).
Several processes may share a root: concurrent writers of one key each rename a whole file.
Whole-entry reads use O_DIRECT where the filesystem supports it (DMA straight into the returned
tensor's buffer, no page-cache copy; the hot set lives in the CPU tier); layer reads use pread.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from pathlib import Path

import torch

from chunkcache.store.chunk_kv import ChunkKV
from chunkcache.store.entry_format import check, decode_buffer, encode, header_length, parse_header, read_layer
from chunkcache.store.errors import EntryUnavailable, Reason, TierWriteError
from chunkcache.store.tier import LayerSource

_KEY = re.compile(r"^[0-9a-f]{16,128}$")
_ALIGN = 4096  # O_DIRECT buffer, offset and length alignment
_TMP = re.compile(r"^\.([0-9a-f]+)\.(\d+)\.[0-9a-f]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DiskTier:
    kind = "disk"
    persistent = True

    def __init__(self, root: str | os.PathLike[str], codec: str = "none", fsync: bool = True,
                 direct_io: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.codec = codec
        self.fsync = fsync
        self.direct_io = direct_io

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"chunk key must be 16-128 lowercase hex characters, got {key!r}")
        return self.root / key[:2] / f"{key}.safetensors"

    # ---- writes -------------------------------------------------------------------------------
    def put(self, kv: ChunkKV) -> int:
        data = encode(kv, self.codec)
        final = self.path(kv.key)
        final.parent.mkdir(exist_ok=True)
        tmp = final.parent / f".{kv.key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            if self.fsync:
                dfd = os.open(final.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            raise TierWriteError(Reason.DISK_FULL if full else Reason.IO_ERROR, f"{final}: {e}") from e
        return len(data)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    # ---- reads --------------------------------------------------------------------------------
    def _read_all(self, path: Path) -> torch.Tensor:
        """The whole file in a fresh uint8 tensor; O_DIRECT (no page-cache copy) where supported."""
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
        if self.direct_io and hasattr(os, "O_DIRECT"):
            padded = -(-size // _ALIGN) * _ALIGN
            raw = torch.empty(padded + _ALIGN, dtype=torch.uint8, device="cpu")
            start = (-raw.data_ptr()) % _ALIGN
            buf = raw[start:start + padded]
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
                try:
                    view, got = memoryview(buf.numpy()), 0
                    while got < size:
                        n = os.readv(fd, [view[got:]])
                        if not n:
                            break
                        got += n
                finally:
                    os.close(fd)
                if got != size:
                    raise EntryUnavailable(Reason.CORRUPT, f"{path} changed size while reading")
                return buf[:size]
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.direct_io = False  # filesystem without O_DIRECT (tmpfs): buffered from now on
        buf = torch.empty(size, dtype=torch.uint8, device="cpu")
        with open(path, "rb", buffering=0) as f:
            view, got = memoryview(buf.numpy()), 0
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    raise EntryUnavailable(Reason.CORRUPT, f"{path} shrank while reading")
                got += n
        return buf

    def get(self, key: str, fingerprint: str | None) -> ChunkKV:
        path = self.path(key)
        try:
            buf = self._read_all(path)
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as e:
            raise EntryUnavailable(Reason.IO_ERROR, f"{path}: {e}", drop=False) from e
        return decode_buffer(buf, key, fingerprint)

    def open_layers(self, key: str, fingerprint: str) -> LayerSource:
        path = self.path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise KeyError(key) from None
        try:
            size = os.fstat(fd).st_size
            header = parse_header(os.pread(fd, header_length(os.pread(fd, 8, 0)), 0), size)
            check(header, key, fingerprint)
        except BaseException:
            os.close(fd)
            raise

        def reader(offset: int, nbytes: int) -> torch.Tensor:
            out = torch.empty(nbytes, dtype=torch.uint8, device="cpu")
            view, got = memoryview(out.numpy()), 0
            while got < nbytes:
                n = os.preadv(fd, [view[got:]], offset + got)
                if not n:
                    raise EntryUnavailable(Reason.CORRUPT, f"{path} shrank while reading")
                got += n
            return out

        return LayerSource(header.key, header.fingerprint, header.token_ids, header.base_position,
                           header.n_layers, read=lambda i: read_layer(header, reader, i),
                           close=lambda: os.close(fd))

    def contains(self, key: str) -> bool:
        return self.path(key).is_file()

    def scan(self) -> list[tuple[str, int]]:
        """Existing entries oldest first; also removes temp files of writers that are dead."""
        found = []
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for p in sub.iterdir():
                m = _TMP.match(p.name)
                if m:
                    if not _pid_alive(int(m.group(2))):
                        p.unlink(missing_ok=True)
                    continue
                if p.suffix == ".safetensors" and _KEY.match(p.stem):
                    try:
                        st = p.stat()
                    except FileNotFoundError:
                        continue
                    found.append((st.st_mtime, p.stem, st.st_size))
        return [(k, size) for _, k, size in sorted(found)]

    def drop_page_cache(self, key: str) -> None:
        """Ask the kernel to drop the file's cached pages (posix_fadvise DONTNEED; benchmarks)."""
        fd = os.open(self.path(key), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def close(self) -> None:
        pass
