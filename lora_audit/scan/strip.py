"""Writing a copy of a LoRA file without its privacy-sensitive metadata; tensor bytes stay identical."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass

from lora_audit.errors import InputError
from lora_audit.scan.metadata import sensitive_keys
from lora_audit.weights.safetensors_file import SafetensorsFile


TEMP_PREFIX = ".lora-audit-strip-"  # then the writer's pid: ".lora-audit-strip-<pid>-<random>"
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-")


@dataclass
class StripResult:
    source: str
    destination: str  # the file written: the target when the destination given is a link
    removed: list[str]  # metadata keys removed
    kept: list[str]


def strip_metadata(source: str, destination: str, *, overwrite: bool = False,
                   extra_keys: tuple[str, ...] = (), keep_keys: tuple[str, ...] = ()) -> StripResult:
    """Copy ``source`` to ``destination`` minus sensitive metadata keys (plus ``extra_keys``, minus ``keep_keys``).

    The tensor table and data are copied byte for byte and the file mode is kept. Refuses to replace
    an existing file unless ``overwrite``, and never replaces anything but a regular file (no device,
    no FIFO). A symbolic link is written through: the file it points to is replaced and the link kept
    (a Hugging Face cache's ``snapshots/<rev>/x.safetensors -> ../../blobs/<hash>``); the result's
    ``destination`` is that file. Writes through a temporary file so a failure never leaves a
    half-written output; those left by a strip that was killed are removed by the next strip into
    the same folder (:func:`remove_stale_temp_files`).
    """
    if not destination:
        raise InputError("output", None, "is empty; give the path of the file to write")
    if os.path.isdir(destination):
        raise InputError("output", destination, "is a directory; give the path of the file to write")
    if os.path.lexists(destination) and not overwrite:
        raise InputError("output", destination, "exists", fix=("force", "to replace it"))
    # a link's target is the file to change: replacing the link would leave the leaky file in place
    target = os.path.realpath(destination) if os.path.islink(destination) else destination
    if os.path.exists(target) and not os.path.isfile(target):
        raise InputError("output", destination, "is not a regular file; strip replaces only regular files")
    with SafetensorsFile(source) as st:  # validates the input
        header_len, header, metadata = st.header_length, dict(st.header), st.metadata
    mode = stat.S_IMODE(os.stat(source).st_mode)
    removed = sorted((sensitive_keys(metadata) | set(extra_keys)) & set(metadata) - set(keep_keys))
    kept = sorted(set(metadata) - set(removed))
    if kept:
        header = {"__metadata__": {k: metadata[k] for k in kept}, **header}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    folder = os.path.dirname(os.path.abspath(target))
    remove_stale_temp_files(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=folder)
    except OSError as e:
        raise InputError("output", destination, f"cannot be written: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            out.write(struct.pack("<Q", len(encoded)))
            out.write(encoded)
            src.seek(8 + header_len)
            shutil.copyfileobj(src, out, 1 << 20)
        SafetensorsFile(tmp).close()  # the output must read back
        os.chmod(tmp, mode)  # mkstemp made it 0600; keep the source's mode
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return StripResult(source, target, removed, kept)


def remove_stale_temp_files(folder: str) -> list[str]:
    """Remove the temporary files of strips into ``folder`` whose process is gone (killed before it
    could clean up); return their paths. A file whose pid is alive, or not ours to signal, stays."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False) or _alive(int(match.group(1))):
            continue
        try:
            os.unlink(entry.path)
            removed.append(entry.path)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows, os.kill would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process, or a pid that cannot be asked about
        return True
    return True
