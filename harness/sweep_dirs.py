"""A sweep point's folder: named by its overrides, so a sweep run again finds (and skips) the points
it finished, and shortened where those names grow past what a file system takes in one folder name."""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

MAX_NAME_BYTES = 255  # what file systems take in one folder name (ext4, XFS, APFS, NTFS)
DIGEST_CHARS = 12


def point_dirname(overrides: str) -> str:
    """`overrides` as they are when short enough; else as many of their first bytes as fit, then a
    digest of all of them (a sweep's points differ in their last overrides as often as their first)."""
    name = overrides.encode()
    if len(name) <= MAX_NAME_BYTES:
        return overrides
    digest = hashlib.sha1(name).hexdigest()[:DIGEST_CHARS]
    return f"{name[: MAX_NAME_BYTES - DIGEST_CHARS - 1].decode(errors='ignore')}-{digest}"


# conf/config.yaml's `hydra.sweep.subdir` calls it; a launcher's worker registers it by importing the app.
OmegaConf.register_new_resolver("point_dirname", point_dirname, replace=True)
