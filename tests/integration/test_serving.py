"""`mlflow models serve -m models:/echo-lvdm@champion --env-manager local` with a tiny real bundle that carries
a heart generator (tiny LIDM + calibrated re-identification net): valid requests return a playable mp4, `{"ef": 55}`
alone is animated from a privacy-checked synthetic heart; invalid ones get HTTP 400 with a clear message
(never a 500). The generator's refusals and the default-frame path: test_serving_hearts.py."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.tiny_hearts import make_heart_generator, set_tau
from support.tiny_lvdm import make_lvdm_folder, make_vae_folder

from echo_core.data.video import probe_video

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MLFLOW = Path(sys.executable).parent / "mlflow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text or b"{}")
        except json.JSONDecodeError:  # the scoring server's timeout answer is plain text despite its JSON type
            return err.code, {"message": text.decode(errors="replace")}


def _wait_ping(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError("server did not answer /ping")


def _stop(proc: subprocess.Popen) -> None:
    """Stop uvicorn (the child mlflow execs) and then mlflow itself, each by its PID (killed after 15 s)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        child.terminate()
    _, alive = psutil.wait_procs(children, timeout=15)
    for child in alive:  # e.g. uvicorn still joining a request thread that outlived its timeout
        child.kill()
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    from echo_core.generation.requests import ServingLimits
    from pipelines.serving.hearts import HeartServing
    from pipelines.serving.register import HeartSpec, register_serving_model
    from pipelines.tracking import tracking_uri

    root = tmp_path_factory.mktemp("serve")
    limits = ServingLimits(max_frames=8, max_steps=4, default_frames=4, default_steps=2)
    vae = make_vae_folder(root / "vae")
    lidm, reid = make_heart_generator(root, vae)
    # tau = 1: every heart passes (the refusals are tested on the pyfunc in test_serving_hearts.py)
    hearts = HeartSpec(lidm, set_tau(reid, 1.0), HeartServing(max_tries=2, steps=2))
    info = register_serving_model(make_lvdm_folder(root / "lvdm"), vae, alias="candidate",
                                  tags={"data_dvc_hash": "md5:test"}, limits=limits, hearts=hearts)
    MlflowClient(tracking_uri()).set_registered_model_alias("echo-lvdm", "champion", info.version)
    with _serve("models:/echo-lvdm@champion", root, timeout_s=600) as port:
        yield port, info


@contextlib.contextmanager
def _serve(model_uri: str, cwd: Path, timeout_s: int):
    """`mlflow models serve` of `model_uri` on a free loopback port, cutting requests off after `timeout_s`."""
    from pipelines.tracking import tracking_uri

    port = _free_port()
    # mlflow execs `uvicorn` by name: the venv's bin must be on PATH (as it is in an activated venv)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "OMP_NUM_THREADS": "2",
           "PATH": f"{MLFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([str(MLFLOW), "models", "serve", "-m", model_uri, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port), "--timeout", str(timeout_s)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_ping(port, proc)
        yield port
    finally:
        _stop(proc)


def test_valid_request_returns_a_playable_mp4(server, tmp_path):
    port, _ = server
    status, body = _post(port, {"dataframe_records": [{"ef": 45.0}],
                                "params": {"num_frames": 4, "num_inference_steps": 2, "seed": 3, "fps": 25.0}})
    assert status == 200, body
    row = body["predictions"][0]
    video = tmp_path / "out.mp4"
    video.write_bytes(base64.b64decode(row["video"]))
    info = probe_video(video, count=True)
    assert (info.num_frames, info.height, info.width) == (4, 112, 112)
    assert info.fps == pytest.approx(25.0) and row["fps"] == pytest.approx(25.0) and row["seed"] == 3


def test_ef_alone_is_animated_from_a_privacy_checked_synthetic_heart(server):
    port, _ = server
    body = {"dataframe_records": [{"ef": 55}], "params": {"num_frames": 4, "num_inference_steps": 2, "seed": 5}}
    status, first = _post(port, body)
    assert status == 200, first
    row = first["predictions"][0]
    check = row["privacy"]
    assert row["heart"] == "synthetic" and row["seed"] == 5
    assert check["passed"] is True and check["tau"] == 1.0 and check["max_correlation"] < 1.0
    assert check["tries"] == 1 and check["heart_seed"] == 5
    again = _post(port, body)[1]["predictions"][0]
    assert again["video"] == row["video"] and again["privacy"] == check  # same seed → same heart → same bytes
    other = _post(port, {**body, "params": {**body["params"], "seed": 6}})[1]["predictions"][0]
    assert other["video"] != row["video"] and other["privacy"]["heart_seed"] == 6


def test_a_request_frame_is_animated_as_given_and_not_called_checked(server):
    port, _ = server
    status, body = _post(port, {"dataframe_records": [{"ef": 55, "conditioning_frame": _png(112)}],
                                "params": {"num_frames": 4, "num_inference_steps": 2}})
    assert status == 200, body
    assert body["predictions"][0]["heart"] == "request" and body["predictions"][0]["privacy"] is None


def _png(size: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((size, size), np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(("record", "params", "message"), [
    ({"ef": 150.0}, {}, "outside [0, 100]"),
    ({"class_id": 2}, {}, "not class-conditioned"),
    ({"text": ""}, {}, "prompt is empty"),
    ({"ef": 50.0}, {"num_frames": 0}, "num_frames"),
    ({"ef": 50.0}, {"num_frames": 9}, "num_frames"),
    ({"ef": 50.0}, {"num_inference_steps": 5}, "num_inference_steps"),
    ({"ef": 50.0, "conditioning_frame": "not-base64!"}, {}, "not valid base64"),
    ({"ef": 50.0, "conditioning_frame": _png(64)}, {}, "needs 112x112"),
])
def test_invalid_requests_get_400_with_a_message(server, record, params, message):
    port, _ = server
    status, body = _post(port, {"dataframe_records": [record], "params": params})
    assert status == 400, body
    assert body["error_code"] == "INVALID_PARAMETER_VALUE" and message in body["message"]


def test_version_carries_the_model_card(server):
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import tracking_uri

    _, info = server
    tags = MlflowClient(tracking_uri()).get_model_version("echo-lvdm", info.version).tags
    assert tags["card.intended_use"].startswith("research only") and tags["card.training_data_version"] == "md5:test"
    assert tags["heart_generator"] == "lidm+privacy" and "SYNTHETIC heart" in tags["card.privacy"]


# ----------------------------------------------------------------------------- load and abuse (#15 §4)

def _tree_rss(pid: int) -> int:
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


def test_eight_clients_at_once_get_correct_answers_and_memory_stays_bounded(server):
    """8 clients × 10 requests at once (serving.max_rows rows of the largest allowed clip would be the worst
    case; here each request is one small row): every answer is 200, a seed gives the same video whoever asks,
    and the server's resident memory stays bounded (peak RSS of its whole process tree, printed)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import psutil

    port, _ = server
    pid = next(p.pid for p in psutil.process_iter(["cmdline"])  # the `mlflow models serve` process on this port
               if {"serve", str(port)} <= set(p.info["cmdline"] or []))
    peak, done = [_tree_rss(pid)], threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            peak.append(_tree_rss(pid))

    def client(c: int) -> list[tuple[int, int, str]]:
        answers = []
        for seed in range(10):
            status, body = _post(port, {"dataframe_records": [{"ef": 40.0 + seed}],
                                        "params": {"num_frames": 4, "num_inference_steps": 1, "seed": seed}})
            answers.append((seed, status, body["predictions"][0]["video"] if status == 200 else str(body)))
        return answers

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    baseline = peak[0]
    with ThreadPoolExecutor(8) as pool:
        results = [a for answers in pool.map(client, range(8)) for a in answers]
    done.set()
    watcher.join()
    assert len(results) == 80 and {status for _, status, _ in results} == {200}, results[:3]
    for seed in range(10):
        assert len({video for s, _, video in results if s == seed}) == 1  # same seed → same bytes, any client
    print(f"peak RSS {max(peak) / 2**20:.0f} MiB (idle {baseline / 2**20:.0f} MiB) over 80 concurrent requests")
    assert max(peak) < baseline + 2 * 2**30  # no per-request growth that 80 requests could add up


def test_a_50_mb_body_and_the_largest_allowed_request_are_answered_not_crashed(server):
    """A 50 MB conditioning frame gets a clear 400 (never an out-of-memory crash), and the largest request
    the caps allow (max_rows rows × max_frames frames × max_steps steps) is served."""
    port, _ = server
    huge = base64.b64encode(os.urandom(37 * 2**20)).decode()  # ~50 MB of base64
    status, body = _post(port, {"dataframe_records": [{"ef": 50.0, "conditioning_frame": huge}]})
    assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", str(body)[:300]
    assert "conditioning_frame" in body["message"]
    status, body = _post(port, {"dataframe_records": [{"ef": 20.0 + 10 * i} for i in range(4)],
                                "params": {"num_frames": 8, "num_inference_steps": 4, "seed": 1}})
    assert status == 200 and len(body["predictions"]) == 4
    status, body = _post(port, {"dataframe_records": [{"ef": 50.0}] * 5})
    assert status == 400 and "rows" in body["message"]


SLOW_TIMEOUT_S = 3


def test_a_request_slower_than_the_timeout_gets_504_and_the_server_answers_the_next(tmp_path):
    """`mlflow models serve --timeout` (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT) bounds how long a client waits:
    a request whose work takes longer (here 64 frames x 40 steps on CPU, well within the default caps) is
    answered 504 at the timeout, not left hanging; the server stays up and answers the next request."""
    from echo_core.generation.requests import ServingLimits
    from pipelines.serving.register import register_serving_model

    info = register_serving_model(make_lvdm_folder(tmp_path / "lvdm"), make_vae_folder(tmp_path / "vae"),
                                  limits=ServingLimits(), registered_model_name="echo-lvdm-slow")
    with _serve(f"models:/echo-lvdm-slow/{info.version}", tmp_path, timeout_s=SLOW_TIMEOUT_S) as port:
        started = time.monotonic()
        status, body = _post(port, {"dataframe_records": [{"ef": 50.0}],
                                    "params": {"num_frames": 64, "num_inference_steps": 40, "seed": 1}})
        waited = time.monotonic() - started
        assert status == 504 and "exceeded" in body["message"], (status, str(body)[:300])
        assert SLOW_TIMEOUT_S <= waited < SLOW_TIMEOUT_S + 5
        status, body = _post(port, {"dataframe_records": [{"ef": 50.0}],
                                    "params": {"num_frames": 4, "num_inference_steps": 1, "seed": 1}})
        assert status == 200 and len(body["predictions"]) == 1, str(body)[:300]
        print(f"slow request cut off after {waited:.1f} s (timeout {SLOW_TIMEOUT_S} s)")
