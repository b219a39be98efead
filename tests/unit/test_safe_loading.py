"""#15 §5: model folders and checkpoints are read with safetensors or `torch.load(weights_only=True)` only.

The scan walks the AST of every module in echo_core/ and pipelines/ and fails on a new call that can unpickle
objects: `torch.load` without `weights_only=True`, `pickle.load(s)`, `joblib.load`, `np.load(allow_pickle=True)`,
`cloudpickle.load(s)`. The one documented exception is accelerate's own checkpoint reader in our own training
checkpoints (`accelerator.load_state`: its RNG state is a pickle that accelerate writes and reads itself; the
folder is never one a user downloads, and checkpoints are not registered).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
              ("joblib", "load"), ("dill", "load"), ("dill", "loads")}
ALLOWED = {("echo_core/training/trainer.py", "load_state")}  # accelerate's RNG state in our own checkpoints


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            yield (owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")), node


def _keyword(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def _unsafe(owner: str, node: ast.Call) -> bool:
    attr = node.func.attr
    if (owner, attr) in UNPICKLERS:
        return True
    if owner == "torch" and attr == "load":
        flag = _keyword(node, "weights_only")
        return not (isinstance(flag, ast.Constant) and flag.value is True)
    if owner in ("np", "numpy") and attr == "load":
        flag = _keyword(node, "allow_pickle")
        return isinstance(flag, ast.Constant) and flag.value is True
    return attr == "load_state"


def unsafe_loads(base: Path = ROOT, roots=("echo_core", "pipelines")) -> list[str]:
    found = []
    for root in roots:
        for path in sorted((base / root).rglob("*.py")):
            rel = str(path.relative_to(base))
            for owner, node in _calls(path):
                if _unsafe(owner, node) and (rel, node.func.attr) not in ALLOWED:
                    found.append(f"{rel}:{node.lineno} {owner}.{node.func.attr}")
    return found


def test_no_code_path_unpickles_objects():
    assert unsafe_loads() == [], "read weights with safetensors or torch.load(..., weights_only=True)"


def test_the_scan_catches_each_unsafe_form(tmp_path):
    bad = tmp_path / "echo_core" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("import pickle, torch, numpy as np\n"
                   "a = torch.load('x')\nb = torch.load('x', weights_only=False)\nc = pickle.loads(b'')\n"
                   "d = np.load('x', allow_pickle=True)\ne = torch.load('x', weights_only=True)\n"
                   "f = np.load('x')\n")
    found = unsafe_loads(tmp_path, ("echo_core",))
    assert [f.split(" ")[0].rsplit(":", 1)[1] for f in found] == ["2", "3", "4", "5"]
