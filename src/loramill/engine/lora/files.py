"""Reading and writing LoRA files safely.

A LoRA is user input: it is never unpickled (``.ckpt``/``.pt``/``.bin`` are refused), and a
safetensors header is checked against the file before any tensor is read (offsets inside the file,
sizes consistent with dtype and shape, no overlaps, a bounded header), so a forged file fails with a
clear error instead of a crash or a huge allocation.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from loramill.errors import InvalidInput

_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
MAX_HEADER_BYTES = 100 * 1024 * 1024
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


@dataclass
class LoraFile:
    """A validated LoRA: its tensors and the metadata strings from its header."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]

    @property
    def family(self) -> str | None:
        from loramill.engine.families import family_of_lora_keys

        return self.metadata.get("loramill.family") or family_of_lora_keys(set(self.tensors))


def _bad(path: Path, what: str, code: str = "invalid_lora") -> InvalidInput:
    return InvalidInput(f"LoRA {path.name}: {what}", code=code, field="loras")


def check_safetensors_header(path: Path) -> dict[str, str]:
    """Validate the header of a safetensors file without reading tensors; return its metadata."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _bad(path, "file is too short to be safetensors")
        (header_len,) = struct.unpack("<Q", head)
        plausible = 1 < header_len <= min(MAX_HEADER_BYTES, size - 8)
        first = fh.read(1) if plausible else b""
        if not plausible or first != b"{":
            # Not a safetensors header; say what it looks like. Pickles start with 0x80 (protocol 2+),
            # torch's zip checkpoints with "PK".
            if head[:1] == b"\x80" or head[:2] == b"PK":
                raise _bad(path, "is a pickle/zip checkpoint, not safetensors; loramill never unpickles LoRAs. "
                           "Convert it to .safetensors with a trusted tool", code="not_safetensors")
            raise _bad(path, f"forged or corrupt safetensors header (declares {header_len} header bytes in a "
                       f"{size}-byte file)", code="corrupt_lora")
        raw = first + fh.read(header_len - 1)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise _bad(path, f"safetensors header is not JSON ({exc})", code="corrupt_lora") from exc
    if not isinstance(header, dict):
        raise _bad(path, "safetensors header is not a JSON object", code="corrupt_lora")
    data_len = size - 8 - header_len
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            count = 1
            for dim in shape:
                if not isinstance(dim, int) or dim < 0:
                    raise ValueError(f"bad dimension {dim!r}")
                count *= dim
            expected = count * _DTYPE_SIZES[dtype]
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(path, f"tensor {name!r} has a malformed header entry ({exc})", code="corrupt_lora") from exc
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= data_len):
            raise _bad(path, f"tensor {name!r} points past the end of the file (offsets {start}..{end}, "
                       f"{data_len} data bytes)", code="corrupt_lora")
        if end - start != expected:
            raise _bad(path, f"tensor {name!r} declares {expected} bytes for shape {shape} but spans "
                       f"{end - start}", code="corrupt_lora")
        spans.append((start, end))
    spans.sort()
    for (_, prev_end), (start, _) in zip(spans, spans[1:]):
        if start < prev_end:
            raise _bad(path, "tensors overlap in the data section", code="corrupt_lora")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise _bad(path, "__metadata__ is not an object", code="corrupt_lora")
    return {str(k): str(v) for k, v in meta.items()}


def read_lora(path: str | Path) -> LoraFile:
    """Read a LoRA file after validating it; refuses anything but safetensors."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"LoRA file {p} does not exist", code="lora_not_found", field="loras")
    if p.suffix.lower() in _PICKLE_SUFFIXES:
        raise _bad(p, f"'{p.suffix}' files are pickles and can run code when loaded; loramill only reads "
                   ".safetensors LoRAs", code="not_safetensors")
    metadata = check_safetensors_header(p)
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(p))
    except Exception as exc:  # safetensors raises its own SafetensorError types
        raise _bad(p, f"could not be read as safetensors ({exc})", code="corrupt_lora") from exc
    if not tensors:
        raise _bad(p, "holds no tensors")
    return LoraFile(path=p, tensors=tensors, metadata=metadata)


def write_lora(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written LoRA behind."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p
