"""Dry run of an accelerate profile: accelerate's own parser and config loader, no process started.

Renders the exact `accelerate launch` command the train flow would run for a profile of infra/accelerate/,
lets accelerate parse it and merge the config file (`_validate_launch_command`, what `accelerate launch`
does before starting anything), checks the multi-node arithmetic, and shows the per-machine torchrun
equivalent. This is how the multi-GPU and multi-node profiles are checked on a machine with no GPU.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

from echo_core.errors import ConfigError


@dataclass(frozen=True)
class LaunchPlan:
    profile: str
    command: list[str]  # accelerate launch ... -m pipelines.cli train lvdm ...
    distributed_type: str
    num_machines: int
    num_processes: int  # total over all machines
    machine_rank: int
    main_process_ip: str | None
    main_process_port: int
    torchrun: list[str]  # what accelerate hands to torch.distributed.run on this machine

    @property
    def processes_per_machine(self) -> int:
        return self.num_processes // self.num_machines


def launch_plan(profile: str, data: Sequence[str], out: str, *, params: str = "params.yaml",
                machine_rank: int | None = None, main_process_ip: str | None = None,
                num_processes: int | None = None) -> LaunchPlan:
    """Parse and validate the launch of `profile` exactly as `accelerate launch` would, without running it."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from pipelines.ops.launch import build_command

    cmd = build_command(data, out, params=params, profile=profile)
    overrides = _overrides(machine_rank, main_process_ip, num_processes)
    at = cmd.index("--config_file") + 2
    cmd = [*cmd[:at], *overrides, *cmd[at:]]
    try:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            args = launch_command_parser().parse_args(cmd[2:])
        args, _, _ = _validate_launch_command(args)
    except SystemExit:
        raise ConfigError(f"accelerate rejected the launch of profile {profile!r}: {err.getvalue().strip()}",
                          fix=f"fix infra/accelerate/{profile}.yaml") from None
    except ValueError as exc:
        raise ConfigError(f"accelerate rejected profile {profile!r}: {exc}",
                          fix=f"fix infra/accelerate/{profile}.yaml") from None
    plan = _plan(profile, cmd, args)
    _check(plan)
    return plan


def _overrides(machine_rank: int | None, ip: str | None, num_processes: int | None) -> list[str]:
    out: list[str] = []
    if machine_rank is not None:
        out += ["--machine_rank", str(machine_rank)]
    if ip:
        out += ["--main_process_ip", ip]
    if num_processes is not None:
        out += ["--num_processes", str(num_processes)]
    return out


def _plan(profile: str, cmd: list[str], args) -> LaunchPlan:
    machines, processes = int(args.num_machines or 1), int(args.num_processes or 1)
    rank, port = int(args.machine_rank or 0), int(args.main_process_port or 29500)
    kind = "MULTI_GPU" if args.multi_gpu else ("CPU" if args.cpu or getattr(args, "use_cpu", False) else "NO")
    torchrun = ["torchrun", "--nproc_per_node", str(processes // max(machines, 1))]
    if machines > 1:
        torchrun += ["--nnodes", str(machines), "--node_rank", str(rank), "--master_addr",
                     str(args.main_process_ip), "--master_port", str(port)]
    else:
        torchrun += ["--master_port", str(port)]
    torchrun += ["-m", args.training_script, *args.training_script_args]
    return LaunchPlan(profile, cmd, kind, machines, processes, rank, args.main_process_ip, port, torchrun)


def _check(plan: LaunchPlan) -> None:
    where = f"infra/accelerate/{plan.profile}.yaml"
    if plan.num_processes % plan.num_machines:
        raise ConfigError(f"{where}: num_processes {plan.num_processes} is not a multiple of num_machines "
                          f"{plan.num_machines}", fix="num_processes is the TOTAL number of GPUs over all machines")
    if not 0 <= plan.machine_rank < plan.num_machines:
        raise ConfigError(f"{where}: machine_rank {plan.machine_rank} is outside 0..{plan.num_machines - 1}",
                          fix="pass --machine-rank 0 on the first machine, 1 on the second, ...")
    if plan.num_machines > 1 and not plan.main_process_ip:
        raise ConfigError(f"{where}: a multi-node launch needs main_process_ip",
                          fix="pass --main-process-ip <address of machine rank 0>")
