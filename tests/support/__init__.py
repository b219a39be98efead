"""Test helpers shared by unit and integration tests (imported as `support.<module>`; tests/ is on pythonpath)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
