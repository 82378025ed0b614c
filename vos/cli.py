"""`vos`: one command for every stage of the pipeline on one machine.

    vos stack up | down | status | env     the local stack (Ray head, MLflow, storage folder)
    vos generate | pretrain | finetune | evaluate | eval-masks | promote | segment
                                           the pipeline stages (pipelines/<stage>.py)
    vos retrain                            scheduled retraining (orchestration)
    vos demo                               the whole pipeline end to end on tiny settings

Each stage command runs the stage's script with the same arguments, so
`vos pretrain --config configs/pretrain_tiny.yaml train.epochs=1` is the same as
`python pipelines/pretrain.py --config configs/pretrain_tiny.yaml train.epochs=1`.
When the local stack is up, stages use it (Ray, MLflow) unless the environment already
names another cluster or tracking server.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path

from rich.table import Table

from core.cli import console
from vos.stack import DEFAULT_ROOT, LocalStack, StackPorts

# command -> (the script's module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("pipelines.generate", "make training clips and write WebDataset shards"),
    "pretrain": ("pipelines.pretrain", "pretrain a model on synthetic clips with Ray Train"),
    "finetune": ("pipelines.finetune", "fine-tune a model on video clips with Ray Train"),
    "evaluate": ("pipelines.evaluate", "score a model on DAVIS-layout sequences (J&F, speed)"),
    "eval-masks": ("pipelines.eval_masks", "score folders of predicted masks against DAVIS"),
    "promote": ("pipelines.promote", "register a model version and gate the champion alias"),
    "segment": ("pipelines.segment", "segment a folder of frames from a first-frame mask"),
    "retrain": ("orchestration.retrain", "retrain on new video data, once or on a schedule"),
    "demo": ("vos.demo", "run the whole pipeline end to end on tiny settings"),
}


def stack_root() -> Path:
    return Path(os.environ.get("VOS_STACK_ROOT", DEFAULT_ROOT))


def use_local_stack() -> None:
    """Point Ray and MLflow clients at the local stack when it is up and nothing else is set."""
    stack = LocalStack(stack_root())
    state = stack.load_state()
    if state is None or not stack.ray_healthy(state):
        return
    for key, value in stack.client_env(state).items():
        os.environ.setdefault(key, value)


def stack_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="vos stack",
        description="The local stack: a Ray head (dashboard and job server), an MLflow server "
        "with a SQLite store and a storage folder, all on 127.0.0.1.",
    )
    parser.add_argument("action", choices=["up", "down", "status", "env"])
    parser.add_argument(
        "--root", default=str(stack_root()), help="state folder (default %(default)s)"
    )
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs Ray may use")
    parser.add_argument("--ray-port", type=int, default=StackPorts.ray)
    parser.add_argument("--dashboard-port", type=int, default=StackPorts.dashboard)
    parser.add_argument("--mlflow-port", type=int, default=StackPorts.mlflow)
    args = parser.parse_args(argv)
    stack = LocalStack(args.root)

    if args.action == "up":
        ports = StackPorts(
            ray=args.ray_port, dashboard=args.dashboard_port, mlflow=args.mlflow_port
        )
        with console.status("starting the local stack (Ray head, MLflow server)..."):
            try:
                stack.up(ports=ports, num_cpus=args.num_cpus)
            except RuntimeError as err:
                console.print(f"[red]{err}[/red]")
                return 1
        print_status(stack)
        console.print(
            f'\nTo use it from a shell: [bold]eval "$(vos stack env --root {args.root})"[/bold]'
        )
        return 0
    if args.action == "down":
        stopped = stack.down()
        console.print(
            f"stack down: stopped {len(stopped)} processes; logs kept in {stack.logs_dir}"
        )
        return 0
    if args.action == "env":
        for key, value in stack.client_env().items():
            print(f"export {key}={value}")
        return 0
    return 0 if print_status(stack) else 1


def print_status(stack: LocalStack) -> bool:
    status = stack.status()
    if not status:
        console.print(f"no local stack at {stack.root} (start one with `vos stack up`)")
        return False
    table = Table(title=f"local stack ({stack.root})")
    table.add_column("part")
    table.add_column("address")
    table.add_column("health")
    for part, info in status.items():
        health = "[green]up[/green]" if info["healthy"] else "[red]down[/red]"
        table.add_row(part, str(info["address"]), health)
    console.print(table)
    state = stack.load_state()
    console.print(f"Ray dashboard and job server: {state.dashboard_url}")
    console.print(f"MLflow UI: {state.mlflow_url}")
    return all(info["healthy"] for info in status.values())


def print_help() -> None:
    console.print(__doc__.split("\n\n")[0])
    table = Table(show_header=False, box=None)
    table.add_row("stack", "up | down | status | env: the local stack")
    for name, (_, summary) in COMMANDS.items():
        table.add_row(name, summary)
    console.print(table)
    console.print("Run `vos COMMAND --help` for a command's options.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print_help()
        return 0
    command, rest = argv[0], argv[1:]
    if command == "stack":
        return stack_main(rest)
    if command not in COMMANDS:
        console.print(f"[red]vos: unknown command {command!r}[/red] (see `vos --help`)")
        return 2
    use_local_stack()
    return run_script(COMMANDS[command][0], rest)


def run_script(module: str, argv: list[str]) -> int:
    """Run a stage script (or `vos demo`, `vos retrain`) as `python -m module argv` would, in
    this process; its exit status."""
    saved = sys.argv
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
