"""Metric-extractor weights: the manifest, where files are looked for, and sha256 verification.

EchoForge never downloads weights. A file is used for an *exact* metric only when its sha256 equals the
value pinned in `infra/metrics/weights.json`; anything else raises `WeightsError` saying how to get it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from echo_core.errors import WeightsError
from echo_core.utils.hashing import sha256_file

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "infra" / "metrics" / "weights.json"
ENV_VAR = "ECHOFORGE_METRIC_WEIGHTS"


@dataclass(frozen=True)
class WeightsEntry:
    """One extractor file of the manifest."""

    key: str
    filename: str
    url: str
    sha256: str | None
    format: str
    default_dir: str
    manifest_path: str

    def how_to_get(self) -> str:
        return (f"download {self.url} and save it as {self.default_dir}/{self.filename} "
                f"(or in the folder named by --weights-dir or ${ENV_VAR})")


@dataclass(frozen=True)
class VerifiedWeights:
    entry: WeightsEntry
    path: Path
    sha256: str


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, WeightsEntry]:
    """Read the manifest (default: infra/metrics/weights.json) into entries keyed by extractor."""
    path = Path(path) if path is not None else DEFAULT_MANIFEST
    if not path.is_file():
        raise WeightsError(f"metric weights manifest not found: {path}",
                           fix="run from the EchoForge checkout or pass the manifest path")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        default_dir = raw.get("default_dir", "models/metrics")
        return {
            key: WeightsEntry(key=key, filename=f["filename"], url=f["url"], sha256=f.get("sha256"),
                              format=f.get("format", "torchscript"), default_dir=default_dir,
                              manifest_path=str(path))
            for key, f in raw["files"].items()
        }
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(f"invalid metric weights manifest {path}: {exc!r}",
                           fix="restore infra/metrics/weights.json from git") from None


def candidate_paths(entry: WeightsEntry, weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where `entry` is looked for, in order (see the manifest's `search_order`)."""
    dirs = [Path(weights_dir)] if weights_dir else []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]))
    dirs.append(Path(entry.default_dir))
    paths = [d / entry.filename for d in dirs]
    # An existing StyleGAN-V (dnnlib) download cache names files <md5(url)>_<filename>.
    cache = Path(os.environ.get("DNNLIB_CACHE_DIR", Path.home() / ".cache" / "dnnlib")) / "downloads"
    paths.append(cache / f"{hashlib.md5(entry.url.encode()).hexdigest()}_{entry.filename}")
    return paths


def verify_weights(entry: WeightsEntry, weights_dir: str | os.PathLike | None = None) -> VerifiedWeights:
    """Find `entry`'s file and check its sha256 against the pinned value; raise WeightsError otherwise."""
    tried = candidate_paths(entry, weights_dir)
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        raise WeightsError(
            f"metric weights '{entry.filename}' not found (looked in: {', '.join(map(str, tried))})",
            fix=entry.how_to_get())
    digest = sha256_file(found)
    if entry.sha256 is None:
        raise WeightsError(
            f"{found} has sha256 {digest}, but {entry.manifest_path} pins no sha256 for '{entry.key}', "
            "so exact metrics cannot use it",
            fix=f"if this file came from {entry.url}, set files.{entry.key}.sha256 to \"{digest}\" "
                f"in {entry.manifest_path}")
    if digest != entry.sha256.lower():
        raise WeightsError(
            f"{found} has sha256 {digest}, expected {entry.sha256} ({entry.manifest_path})",
            fix=f"the file is corrupt or a different version; {entry.how_to_get()}")
    return VerifiedWeights(entry=entry, path=found, sha256=digest)
