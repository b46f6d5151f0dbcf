"""Storage keys: what a safe key is, and where each kind of object lives (docs/contracts.md, "Storage layout").

The layout is part of the contract with clients (they read results by key), so it is written once, here;
the storage adapters only store bytes under whatever key they are given, after ``validate_key`` has made
sure it cannot leave its prefix.

```
users/{userId}/images/{taskId}/{nnn}-{sha256}.{ext}   training images uploaded through the gateway
users/{userId}/images/{taskId}/{nnn}-{sha256}.txt     an image's caption, if one was uploaded (any image key: caption_key)
users/{userId}/models/{taskId}.safetensors            a trained LoRA
users/{userId}/generations/{taskId}/{n}.png           generated images
checkpoints/{taskId}/step-NNNNNN/<file>               training checkpoints (internal)
generated/{request_id}.png                            a Tsuki request's image, where its clients look for it
```
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import unquote

from loramill.errors import InvalidInput

_KEY_CHARS = re.compile(r"^[A-Za-z0-9._\-/@+=]+$")
MAX_KEY_LENGTH = 1024  # S3's limit; also keeps local paths under every filesystem's PATH_MAX


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative storage key, else raise ``InvalidInput`` naming it.

    Refuses absolute paths, ``..`` segments (also URL-encoded), backslashes, empty segments and
    control characters, so no key can escape a local root or address another tenant's prefix by
    trickery.
    """
    if not isinstance(key, str) or not key:
        raise InvalidInput("storage key is empty; give a path like users/<userId>/images/a.jpg",
                           code="invalid_storage_key", field="key")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(f"storage key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}",
                           code="invalid_storage_key", field="key")
    if "://" in key or key.lower().startswith(("http:", "https:", "s3:", "data:")):
        raise InvalidInput(f"storage key {key[:200]!r} is a URL, not a key; upload the file (or fetch it with "
                           "`loramill dataset prepare URL`) and give its key, like users/<userId>/images/a.jpg",
                           code="invalid_storage_key", field="key")
    decoded = key
    for _ in range(3):  # catch %2e%2e and double encodings
        decoded = unquote(decoded)
    for candidate in (key, decoded):
        if candidate.startswith("/") or "\\" in candidate or "\x00" in candidate:
            raise InvalidInput(f"storage key {key!r} must be a relative path with '/' separators",
                               code="invalid_storage_key", field="key")
        parts = candidate.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise InvalidInput(f"storage key {key!r} has an empty, '.' or '..' segment; "
                               "keys may not leave their prefix", code="invalid_storage_key", field="key")
        if any(len(p) > 255 for p in parts):
            raise InvalidInput(f"storage key {key[:80]!r}... has a segment longer than 255 characters, "
                               "which no filesystem stores; shorten it", code="invalid_storage_key", field="key")
    if not _KEY_CHARS.match(key):
        raise InvalidInput(f"storage key {key!r} has characters outside A-Z a-z 0-9 . _ - / @ + =",
                           code="invalid_storage_key", field="key")
    return posixpath.normpath(key)


def user_prefix(user_id: str) -> str:
    """Everything a user owns lives under this prefix; a key outside it is not theirs."""
    return f"users/{user_id}/"


def owned_by(key: str, user_id: str) -> bool:
    """Whether the (already validated) ``key`` lies under ``user_id``'s prefix."""
    return key.startswith(user_prefix(user_id))


def upload_key(user_id: str, task_id: str, index: int, digest: str, extension: str) -> str:
    """Where the ``index``-th uploaded training image of a job goes; named by content, so a retried
    upload of the same images names the same keys."""
    return f"{user_prefix(user_id)}images/{task_id}/{index:03d}-{digest}.{extension}"


def caption_key(image_key: str) -> str:
    """Where the caption of the image at ``image_key`` lives: beside it, the suffix replaced by ``.txt``
    (kohya's ``photo1.png`` + ``photo1.txt``). Optional: a missing one means "no caption"."""
    stem, _suffix = posixpath.splitext(image_key)
    return f"{stem}.txt"


def model_key(user_id: str, task_id: str) -> str:
    """Where a training job's LoRA goes."""
    return f"{user_prefix(user_id)}models/{task_id}.safetensors"


def generations_prefix(user_id: str, task_id: str) -> str:
    """The folder holding a generation job's images."""
    return f"{user_prefix(user_id)}generations/{task_id}/"


def image_key(user_id: str, task_id: str, n: int) -> str:
    """Where the ``n``-th image of a generation job goes."""
    return f"{generations_prefix(user_id, task_id)}{n}.png"


def tsuki_image_key(request_id: str) -> str:
    """Where the Tsuki preset publishes a request's image (that system's clients read it there)."""
    return f"generated/{request_id}.png"


def checkpoints_prefix(task_id: str) -> str:
    """Where the checkpoints of a training job live (outside every user's prefix: not downloadable)."""
    return f"checkpoints/{task_id}/"
