"""`echoforge ops …`: MLflow and Prefect servers, work pool + GPU limit, deployments, launch dry runs.

Servers run in the foreground (the process is replaced by the server, so Ctrl-C and a supervisor's
SIGTERM reach it directly); put them under systemd/supervisord in production (infra/*/README.md).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import typer

from pipelines.settings import project_root


def mlflow_server(
    host: str | None = typer.Option(None, "--host", help="Interface to bind (default 127.0.0.1: loopback only)."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Port (default 5000)."),
    backend_store_uri: str | None = typer.Option(None, "--backend-store-uri",
                                                 help="Default: sqlite:///<project>/mlruns/mlflow.db."),
    artifacts_destination: str | None = typer.Option(None, "--artifacts-destination",
                                                     help="Default: <project>/mlruns/artifacts (or s3://…)."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Server worker processes."),
    auth: bool = typer.Option(False, "--auth", help="MLflow's basic-auth app (or MLFLOW_AUTH=basic): users and "
                              "permissions; needs MLFLOW_AUTH_CONFIG_PATH (infra/mlflow/basic_auth.ini.example)."),
    env_file: Path | None = typer.Option(None, "--env-file", help="KEY=VALUE file, e.g. the production profile "
                                                                  "(infra/mlflow/production.env.example)."),
    print_only: bool = typer.Option(False, "--print", help="Print the command instead of starting the server."),
) -> None:
    """Start `mlflow server` with proxied artifacts (clients need no access to the artifact store)."""
    from pipelines.ops.mlflow_server import exec_server, is_loopback, read_env_file, resolve_config, server_command

    env = {**os.environ, **(read_env_file(env_file) if env_file else {})}
    cfg = resolve_config(project_root(), env, host=host, port=port, backend_store_uri=backend_store_uri,
                         artifacts_destination=artifacts_destination, workers=workers, auth=auth)
    if print_only:
        typer.echo(" ".join(server_command(cfg)))
        return
    if not is_loopback(cfg.host) and not cfg.auth:
        typer.secho(f"warning: binding {cfg.host} without authentication: start it with --auth (MLflow's "
                    "basic-auth app) or behind a proxy with auth (infra/mlflow/README.md)", fg=typer.colors.YELLOW,
                    err=True)
    typer.echo(f"MLflow tracking server on {cfg.url} (store {cfg.backend_store_uri}, artifacts "
               f"{cfg.artifacts_destination}); clients: export MLFLOW_TRACKING_URI={cfg.url}", err=True)
    exec_server(cfg, env)


def prefect_server(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback by default)."),
    port: int = typer.Option(4200, "--port", min=1, max=65535),
) -> None:
    """Start `prefect server` (state in $PREFECT_HOME, project-local by default)."""
    from pipelines.ops.mlflow_server import is_loopback
    from pipelines.ops.prefect_setup import server_command

    cmd = server_command(host, port)
    if not os.environ.get("PREFECT_SERVER_API_AUTH_STRING") and not is_loopback(host):
        typer.secho(f"warning: binding {host} without authentication: set PREFECT_SERVER_API_AUTH_STRING="
                    "user:password (clients: PREFECT_API_AUTH_STRING)", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"Prefect server on http://{host}:{port}; clients: export PREFECT_API_URL=http://{host}:{port}/api",
               err=True)
    os.execv(cmd[0], cmd)


def prefect_setup(
    pool: str = typer.Option("echoforge", "--pool", help="Process work pool to create."),
    gpus: int = typer.Option(1, "--gpus", min=0, help="Slots of the global concurrency limit `gpu` "
                                                     "(one per card; 0 removes the limit)."),
    zombie_after: int = typer.Option(90, "--zombie-after", min=0, help="Mark flow runs Crashed after this many "
                                     "seconds without a heartbeat (0 removes the automation)."),
) -> None:
    """Create the process work pool, the `gpu` global concurrency limit and the zombie-run automation."""
    from pipelines.ops.concurrency import ensure_gpu_limit
    from pipelines.ops.prefect_setup import ensure_work_pool, ensure_zombie_automation

    typer.echo(ensure_work_pool(pool))
    typer.echo(ensure_gpu_limit(gpus))
    typer.echo(ensure_zombie_automation(zombie_after))


def worker(
    pool: str = typer.Option("echoforge", "--pool"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most this many flow runs at once."),
) -> None:
    """Start a process worker for the pool (runs flow runs as subprocesses in the project folder)."""
    from pipelines.ops.prefect_setup import worker_command, worker_env

    cmd = worker_command(pool, limit)
    os.execve(cmd[0], cmd, worker_env())  # its flow runs inherit the 30 s heartbeat


def deploy(
    prefect_file: Path = typer.Option(Path("infra/prefect/prefect.yaml"), "--prefect-file"),
    name: list[str] | None = typer.Option(None, "--name", help="Only this deployment, e.g. preprocess/phantom "
                                                               "(repeatable; default: all)."),
    print_only: bool = typer.Option(False, "--print", help="Print the command instead of running it."),
) -> None:
    """`prefect deploy` the project's deployments (run from the project folder; the pull step cds there)."""
    from echo_core.errors import EchoForgeError
    from pipelines.ops.prefect_setup import deploy_command

    cmd = deploy_command(prefect_file, name or ())
    typer.echo(" ".join(cmd))
    if print_only:
        return
    if subprocess.run(cmd, cwd=project_root()).returncode != 0:
        raise EchoForgeError("prefect deploy failed (see above)",
                             fix="start the server and create the pool first: echoforge ops prefect-setup")


def launch_dry_run(
    profile: str = typer.Option(..., "--profile", help="infra/accelerate/<profile>.yaml, e.g. multi-node."),
    data: list[str] = typer.Option(["outputs/latents/dynamic"], "--data", help="Latent store (repeatable)."),
    out: str = typer.Option("outputs/lvdm", "--out"),
    machine_rank: int | None = typer.Option(None, "--machine-rank", min=0),
    main_process_ip: str | None = typer.Option(None, "--main-process-ip"),
    num_processes: int | None = typer.Option(None, "--num-processes", min=1, help="Total over all machines."),
) -> None:
    """Validate an accelerate profile with accelerate's own parser; print the launch and torchrun commands."""
    from pipelines.ops.accelerate_dry_run import launch_plan

    plan = launch_plan(profile, data, out, machine_rank=machine_rank, main_process_ip=main_process_ip,
                       num_processes=num_processes)
    typer.echo(f"profile {plan.profile}: {plan.distributed_type}, {plan.num_machines} machine(s) x "
               f"{plan.processes_per_machine} process(es), this machine rank {plan.machine_rank}")
    typer.echo("launch:   " + " ".join(plan.command))
    typer.echo("torchrun: " + " ".join(plan.torchrun))


def register(app: typer.Typer) -> None:
    """Add the `ops` commands."""
    app.command("mlflow-server")(mlflow_server)
    app.command("prefect-server")(prefect_server)
    app.command("prefect-setup")(prefect_setup)
    app.command("worker")(worker)
    app.command("deploy")(deploy)
    app.command("launch-dry-run")(launch_dry_run)
