"""Fault campaign over the whole DVC DAG: SIGKILL stages at seeded random moments, re-run, count what survives.

In a throw-away copy of the project (the real code, dvc.yaml and params.yaml at a CPU-campaign size, its own
git repo, DVC cache and MLflow sqlite store):
1. clean run: `dvc repro` of the whole DAG, timing each stage, and the DVC lock as the reference;
2. per kill (stages drawn without replacement from every stage of the DAG, seeded): `dvc repro -f -s STAGE`
   in its own process group, SIGKILLed after a seeded fraction of the stage's clean time (the whole group:
   dvc, the stage command and every worker it started), then `infra/scripts/repro.sh STAGE` (`make repro`:
   a torn dvc.lock repaired before, stale staging and orphaned runs cleared after) to recover;
3. after the recovery: every output byte-identical to the clean run (DVC md5), or else loadable and
   complete (same files; each .safetensors/.json/.csv/.yaml/.mp4/.png/.jpg opened and read through); no temp
   files of killed writers left; no MLflow run RUNNING whose process is gone; every registered model version's
   artefacts present; the stage up to date in `dvc status`;
4. the stage's outputs are put back to the clean run's (`dvc checkout` of the clean lock) so every kill starts
   from the same DAG.

A kill counts as *injected* only when the stage was still running at the kill; *recovered* when the re-run
succeeded and every check passed; *corrupt* when any output was unreadable, incomplete or a leftover remained.
`lost_s` = (time before the kill) + (recovery time) − (clean time): the work the fault cost.

    .venv/bin/python benchmarks/faults.py                    # 24 kills, seed 0 (~30 min on 2 cores)
    .venv/bin/python benchmarks/faults.py --kills 4 --stages prepare@dynamic,train
Results: benchmarks/results/faults.json (written by this script only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from echo_core.utils.atomic import write_json_atomic  # noqa: E402
from pipelines.ops.repro_sweep import recorded_outputs, temp_leftovers  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
RUN_TIME = re.compile(r"\d{8}T\d{6}(\.\d+)?Z")
CODE = ("echo_core", "pipelines", "infra", "dvc.yaml", ".gitignore", "pyproject.toml")
RECOVERY_TOOLS = ("infra", "pipelines/ops", "pipelines/tracking.py")
# key → cap: every training and sampling budget of params.yaml at a campaign size. The data (the phantom
# default) and the evaluators (judges, controls, bootstrap sizes) stay the demo's: at fewer held-out videos
# the controls stage rightly fails (an evaluator that cannot tell its controls apart is refused).
CAPS = {"max_steps": 12, "warmup_steps": 2, "every": 6, "steps": 4}


@dataclass
class Kill:
    index: int
    stage: str
    at_s: float
    clean_s: float
    injected: bool = False
    killed_after_s: float = 0.0
    leftovers_after_kill: list[str] = field(default_factory=list)
    recovery_ok: bool = False
    recovery_s: float = 0.0
    byte_identical: bool = False
    changed_outputs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def recovered(self) -> bool:
        return self.injected and self.recovery_ok and not self.problems

    def row(self) -> dict[str, Any]:
        lost = self.killed_after_s + self.recovery_s - self.clean_s
        return {**asdict(self), "recovered": self.recovered, "corrupt": bool(self.problems),
                "lost_s": round(max(lost, 0.0), 2)}


# -- the throw-away project ------------------------------------------------------------------------------
def cap_budgets(node: Any) -> Any:
    """Every key of CAPS anywhere in params.yaml, capped (the DAG and its checks stay the real ones)."""
    if isinstance(node, dict):
        return {k: (min(v, CAPS[k]) if k in CAPS and isinstance(v, int) and not isinstance(v, bool)
                    else cap_budgets(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [cap_budgets(v) for v in node]
    return node


def campaign_params(params: dict[str, Any]) -> dict[str, Any]:
    serving = params.pop("serving")  # request caps and defaults, checked against each other: left as they are
    params = {**cap_budgets(params), "serving": serving}
    serving["hearts"]["steps"] = min(serving["hearts"]["steps"], CAPS["steps"])
    for name in params["synth"]:
        params["synth"][name]["num_frames"] = min(params["synth"][name]["num_frames"], 48)
    params["sample"].update(num_frames=48, num_samples=4)
    return params


def project_env(root: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "PREFECT_HOME": str(root / ".prefect"),
            "DVC_SITE_CACHE_DIR": str(root / ".dvc" / "site-cache"), "DVC_NO_ANALYTICS": "1",
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", "DO_NOT_TRACK": "1",
            "GX_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run(cmd: list[str], root: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {root}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def make_project(root: Path) -> dict[str, str]:
    """Copy the code and DAG, write the campaign params, git + dvc init, materialise the phantom data."""
    root.mkdir(parents=True, exist_ok=True)
    # the committed code (git HEAD), not the working tree: the campaign judges what was submitted
    archive = subprocess.run(["git", "archive", "HEAD", *CODE], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, check=True)
    params = campaign_params(yaml.safe_load(committed.stdout))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env(root)
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "-c", "user.name=faults", "-c", "user.email=faults@localhost", "commit", "-qm", "campaign"],
        root, env)
    run(["bash", "infra/scripts/materialize_data.sh"], root, env)
    return env


def refresh_recovery_tools(root: Path) -> None:
    """The committed recovery entry point (infra/, pipelines/ops/, pipelines/tracking.py: no stage depends on
    them) into a reused project, so its clean outputs stay valid while the recovery is today's."""
    archive = subprocess.run(["git", "archive", "HEAD", *RECOVERY_TOOLS], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)


# -- the clean run ---------------------------------------------------------------------------------------
def timed_repro(root: Path, env: dict[str, str], target: list[str] | None = None) -> dict[str, float]:
    """`dvc repro`, streaming: each stage's time runs from its 'Running stage' line to the next one."""
    proc = subprocess.Popen(["dvc", "repro", *(target or [])], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    times, current, started, tail = {}, None, time.monotonic(), []
    for line in proc.stdout:
        tail = (tail + [line])[-60:]
        found = re.search(r"Running stage '([^']+)'", line)
        if found:
            if current:
                times[current] = time.monotonic() - started
            current, started = found.group(1), time.monotonic()
    if proc.wait() != 0:
        raise RuntimeError(f"clean dvc repro failed:\n{''.join(tail)}")
    if current:
        times[current] = time.monotonic() - started
    return times


def times_from_mtimes(root: Path) -> dict[str, float]:
    """Each stage's clean time estimated from its outputs' modification times (DVC runs stages one at a
    time): for stages an interrupted clean run finished before, whose times were not streamed."""
    ends = {}
    for stage in lock_outputs(root):
        files = [f for out in recorded_outputs(root, stage) if out.exists()
                 for f in ([out] if out.is_file() else out.rglob("*")) if f.is_file()]
        if files:
            ends[stage] = max(f.stat().st_mtime for f in files)
    order = sorted(ends, key=ends.get)
    data = max(f.stat().st_mtime for f in (root / "data").rglob("*") if f.is_file())
    starts = [data] + [ends[s] for s in order[:-1]]
    return {stage: max(ends[stage] - start, 0.5) for stage, start in zip(order, starts, strict=True)}


def lock_outputs(root: Path) -> dict[str, dict[str, str]]:
    """stage → {output path: md5} from dvc.lock."""
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {name: {o["path"]: o["md5"] for o in spec.get("outs", [])} for name, spec in stages.items()}


def clean_run(root: Path, env: dict[str, str]) -> tuple[dict[str, float], str]:
    times = timed_repro(root, env)
    return times, (root / "dvc.lock").read_text()


# -- one kill ---------------------------------------------------------------------------------------------
def _drain(proc: subprocess.Popen, started: list[float]) -> None:
    for line in proc.stdout:
        if not started and "Running stage" in line:
            started.append(time.monotonic())


def _kill_everything(proc: subprocess.Popen) -> None:
    """A machine dying: SIGKILL the process group and every descendant, even those that left the group."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    with_group = [proc.pid] + [p.pid for p in family]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in with_group:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(family, timeout=10)


def inject(root: Path, env: dict[str, str], kill: Kill) -> None:
    """Force-run the stage alone; SIGKILL it `at_s` after its command started (dvc's own start-up excluded)."""
    import threading

    proc = subprocess.Popen(["dvc", "repro", "-f", "-s", kill.stage], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    started: list[float] = []
    drain = threading.Thread(target=_drain, args=(proc, started), daemon=True)
    drain.start()
    deadline = time.monotonic() + 120
    while not started and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    begin = started[0] if started else time.monotonic()
    while proc.poll() is None and time.monotonic() - begin < kill.at_s:
        time.sleep(0.02)
    kill.injected = proc.poll() is None
    kill.killed_after_s = round(time.monotonic() - begin, 2)
    if kill.injected:
        _kill_everything(proc)
    else:
        proc.wait()
    drain.join(timeout=10)
    kill.leftovers_after_kill = leftovers(root, kill.stage)


def recover(root: Path, env: dict[str, str], kill: Kill) -> None:
    began = time.monotonic()
    done = run(["bash", "infra/scripts/repro.sh", kill.stage], root, env, check=False)  # what `make repro` runs
    kill.recovery_s = round(time.monotonic() - began, 2)
    kill.recovery_ok = done.returncode == 0
    if not kill.recovery_ok:
        kill.problems.append(f"re-run failed (exit {done.returncode}): {(done.stdout + done.stderr)[-600:]}")


# -- checks -----------------------------------------------------------------------------------------------
def leftovers(root: Path, stage: str) -> list[str]:
    """Temp files of killed writers inside the stage's outputs and next to them (by the names that
    `make repro`'s sweep clears: pipelines/ops/repro_sweep.py)."""
    return [str(p.relative_to(root)) for p in temp_leftovers(recorded_outputs(root, stage))]


def _cached_listing(root: Path, md5: str) -> set[str] | None:
    """The file list DVC recorded for a directory output (its .dir manifest in the cache)."""
    if not md5.endswith(".dir"):
        return None
    manifest = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    if not manifest.is_file():  # a `cache: false` output: DVC keeps no listing (files are still read through)
        return None
    return {entry["relpath"] for entry in json.loads(manifest.read_text())}


def unreadable(path: Path) -> str | None:
    """Open and read a file through by its type; the reason it cannot be, or None."""
    try:
        suffix = path.suffix.lower()
        if path.stat().st_size == 0 and suffix not in {".txt", ".log", ".md"}:
            return "empty"
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    f.get_tensor(key)
        elif suffix == ".json":
            json.loads(path.read_text())
        elif suffix in {".yaml", ".yml"} or path.name == "MLmodel":
            yaml.safe_load(path.read_text())
        elif suffix == ".csv":
            import pandas as pd

            pd.read_csv(path)
        elif suffix in {".mp4", ".avi"}:
            from echo_core.data.video import read_video

            frames, _ = read_video(path)
            if len(frames) == 0:
                return "no frames"
        elif suffix in {".png", ".jpg", ".jpeg"}:
            from PIL import Image

            with Image.open(path) as image:
                image.load()
    except Exception as exc:  # any failure to read is the finding itself
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def _timeless(relpath: str) -> str:
    """A path with its run timestamps masked: GX data docs name each validation run by its time."""
    return RUN_TIME.sub("<time>", relpath)


def check_outputs(root: Path, kill: Kill, clean: dict[str, str]) -> None:
    now = lock_outputs(root).get(kill.stage, {})
    kill.changed_outputs = sorted(p for p, md5 in clean.items() if now.get(p) != md5)
    kill.byte_identical = not kill.changed_outputs
    for rel in kill.changed_outputs:
        out = root / rel
        if not out.exists():
            kill.problems.append(f"{rel}: missing after the re-run")
            continue
        expected = _cached_listing(root, clean[rel])
        files = [out] if out.is_file() else sorted(p for p in out.rglob("*") if p.is_file())
        if expected is not None:
            have = {_timeless(str(p.relative_to(out))) for p in files}
            missing = {_timeless(p) for p in expected} - have
            if missing:
                kill.problems.append(f"{rel}: incomplete, missing {sorted(missing)[:5]}")
        for path in files:
            reason = unreadable(path)
            if reason:
                kill.problems.append(f"{path.relative_to(root)}: unreadable ({reason})")
    kill.problems += [f"{p}: leftover temp file" for p in leftovers(root, kill.stage)]


def check_tracking(root: Path, kill: Kill) -> None:
    """No run RUNNING with its process gone; every registered version READY with its artefacts present."""
    import mlflow

    from pipelines.tracking import OWNER_TAG, is_orphaned, running_runs

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    for r in running_runs(client):
        if OWNER_TAG not in r.data.tags or is_orphaned(r):
            kill.problems.append(f"MLflow run {r.info.run_id} ({r.info.run_name}) RUNNING, its process gone")
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name='{model.name}'"):
            where = client.get_model_version_download_uri(model.name, version.version)
            folder = Path(where.removeprefix("file://"))
            if version.status != "READY":
                kill.problems.append(f"{model.name} v{version.version}: status {version.status}")
            elif not folder.is_dir() or not any(folder.iterdir()):
                kill.problems.append(f"{model.name} v{version.version}: artefacts missing at {folder}")


def check_status(root: Path, env: dict[str, str], kill: Kill) -> None:
    done = run(["dvc", "status", kill.stage], root, env, check=False)
    report = done.stdout.replace("always changed", "")  # an always_changed stage (promote) is never up to date
    changed = [line for line in report.splitlines() if line.strip().startswith(("changed", "modified", "deleted",
                                                                                "new", "not in cache"))]
    if done.returncode != 0 or changed:
        kill.problems.append(f"dvc status: {kill.stage} not up to date after the re-run: {done.stdout[-300:]}")


def restore(root: Path, env: dict[str, str], clean_lock: str, stage: str) -> None:
    """Back to the clean run's outputs of `stage` (from the DVC cache), so the next kill starts from the same
    DAG (a kill and its recovery touch only that stage's outputs)."""
    (root / "dvc.lock").write_text(clean_lock)
    run(["dvc", "checkout", "-f", stage], root, env)


# -- the campaign -----------------------------------------------------------------------------------------
def plan_kills(times: dict[str, float], n: int, seed: int, stages: list[str] | None) -> list[Kill]:
    """`n` kills over the DAG: every stage once (seeded order) before any stage twice; the moment is a
    seeded fraction 0.05-0.95 of the stage's clean time (early: start-up and first writes; late: mid-write)."""
    rng = random.Random(seed)
    pool = sorted(stages or times)  # not the dict's order: a fresh and a reused clean run draw the same plan
    order: list[str] = []
    while len(order) < n:
        order += rng.sample(pool, len(pool))
    return [Kill(i, stage, round(rng.uniform(0.05, 0.95) * times[stage], 2), round(times[stage], 2))
            for i, stage in enumerate(order[:n])]


def one_kill(root: Path, env: dict[str, str], kill: Kill, clean: dict[str, dict[str, str]], lock: str) -> Kill:
    for _ in range(3):  # a stage that finished before the kill: try again, earlier
        inject(root, env, kill)
        if kill.injected:
            break
        restore(root, env, lock, kill.stage)
        kill.at_s = round(kill.at_s / 3, 2)
    recover(root, env, kill)
    if kill.recovery_ok:
        check_outputs(root, kill, clean.get(kill.stage, {}))
        check_status(root, env, kill)
    check_tracking(root, kill)
    restore(root, env, lock, kill.stage)
    return kill


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def summary(kills: list[Kill], times: dict[str, float], started: float) -> dict[str, Any]:
    rows = [k.row() for k in kills]
    per_stage: dict[str, dict[str, int]] = {}
    for row in rows:
        entry = per_stage.setdefault(row["stage"], {"kills": 0, "recovered": 0, "corrupt": 0})
        entry["kills"] += row["injected"]
        entry["recovered"] += row["recovered"]
        entry["corrupt"] += row["corrupt"]
    injected = [r for r in rows if r["injected"]]
    return {
        "benchmark": "faults", "method": __doc__.split("\n\n")[1],
        "kills": len(injected), "recovered": sum(r["recovered"] for r in injected),
        "corrupt": sum(r["corrupt"] for r in rows), "not_injected": len(rows) - len(injected),
        "byte_identical": sum(r["byte_identical"] for r in injected),
        "lost_s_total": round(sum(r["lost_s"] for r in injected), 1),
        "stages_in_dag": len(times), "stages_killed": len({r["stage"] for r in injected}),
        "per_stage": per_stage, "clean_stage_s": {k: round(v, 2) for k, v in times.items()},
        "campaign_s": round(time.monotonic() - started, 1), "machine": machine(),
        "load_average": list(os.getloadavg()), "rows": rows,
    }


def campaign(root: Path, n: int, seed: int, stages: list[str] | None) -> dict[str, Any]:
    started = time.monotonic()
    env, times, lock, code = prepared_project(root)
    clean = lock_outputs(root)
    kills, done_file = [], root.parent / f"kills-seed{seed}.jsonl"
    done = {row["index"]: row for row in map(json.loads, done_file.read_text().splitlines())} \
        if done_file.is_file() else {}
    for kill in plan_kills(times, n, seed, stages):
        if kill.index in done and done[kill.index]["stage"] == kill.stage:  # an interrupted campaign resumes
            kills.append(Kill(**{k: v for k, v in done[kill.index].items() if k in Kill.__dataclass_fields__}))
            continue
        one_kill(root, env, kill, clean, lock)
        with done_file.open("a") as f:
            f.write(json.dumps(asdict(kill)) + "\n")
        verdict = "recovered" if kill.recovered else ("not injected" if not kill.injected else "PROBLEM")
        print(f"kill {kill.index + 1}/{n} {kill.stage} at {kill.killed_after_s}s of {kill.clean_s}s: {verdict}"
              + (f" {kill.problems}" if kill.problems else ""), flush=True)
        kills.append(kill)
    ran = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    # stage commands run the installed (editable) package, i.e. this checkout; the copy holds the DAG's deps
    return {**summary(kills, times, started), "dag_commit": code, "code_commit": ran.stdout.strip(),
            "recovery_command": "bash infra/scripts/repro.sh STAGE (what `make repro` runs)"}


def prepared_project(root: Path) -> tuple[dict[str, str], dict[str, float], str, str]:
    """The project after its clean run; a --workdir that already holds one (clean.json) is reused, so a
    campaign can be extended or re-run without paying the clean run again (its code commit is recorded)."""
    state = root.parent / "clean.json"
    if state.is_file() and (root / "dvc.lock").is_file():
        saved = json.loads(state.read_text())
        print(f"reusing the clean run in {root} (code at {saved['code_commit'][:12]})", flush=True)
        refresh_recovery_tools(root)
        return project_env(root), saved["times"], saved["lock"], saved["code_commit"]
    code = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if (root / ".dvc").is_dir():  # an interrupted clean run: DVC skips the stages it finished
        env = project_env(root)
        code = (root.parent / "code_commit").read_text().strip()
    else:
        env = make_project(root)
        (root.parent / "code_commit").write_text(code)
    print(f"clean run of the whole DAG in {root} ...", flush=True)
    measured, lock = clean_run(root, env)
    times = {**times_from_mtimes(root), **measured}
    write_json_atomic(state, {"times": times, "lock": lock, "code_commit": code})
    return env, times, lock, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default=None, help="comma-separated stages to draw from (default: all)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder, removed after")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="echoforge-faults-"))
    stages = args.stages.split(",") if args.stages else None
    try:
        result = campaign(workdir / "project", args.kills, args.seed, stages)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    write_json_atomic(args.out, {**result, "seed": args.seed})
    print(f"{result['kills']} kills, {result['recovered']} recovered, {result['corrupt']} corrupt -> {args.out}")


if __name__ == "__main__":
    main()
