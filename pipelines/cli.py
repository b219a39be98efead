"""`echoforge`: the one entry point for humans, dvc.yaml and Prefect.

Sub-commands live in `pipelines/commands/<group>.py`; each exposes `register(app)`. Heavy libraries
(torch, diffusers, mlflow, GX) are imported inside the commands, so `echoforge --help` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from pipelines.settings import apply_defaults

apply_defaults()

app = typer.Typer(
    name="echoforge",
    help="EchoForge: echocardiography video synthesis, from raw data to a served model. Research use only.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# (group name, help, modules under pipelines.commands that each add commands to the group: `module` calls its
# `register(app)`, `module:function` another function of it)
GROUPS = [
    ("data", "Phantom datasets, validation, preparation, reference sets.",
     ["data_phantom", "data_validate", "data_prepare"]),
    ("vae", "Train, import and register the VAE.", ["vae"]),
    ("latents", "Encode prepared datasets into VAE latents.", ["latents"]),
    ("evaluate", "FID/FVD/IS/KID and downstream evaluation.", ["evaluate"]),
    ("flow", "Run a Prefect flow: preprocess, encode, train, sample, evaluate, synthesize, end-to-end.", ["flow"]),
    ("train", "Train the latent video diffusion model.", ["train"]),
    ("lvdm", "Import the reference systems' latent video diffusion model.", ["imports:register_lvdm"]),
    ("lidm", "Train the latent image diffusion model and sample synthetic hearts.", ["lidm", "imports:register_lidm"]),
    ("synth", "Build fully synthetic, privacy-checked datasets (LIDM -> privacy filter -> LVDM).", ["synth"]),
    ("privacy", "Re-identification model, privacy filter, memorisation audit.",
     ["privacy", "imports:register_privacy"]),
    ("registry", "Promote, roll back and list registered model versions.", ["registry"]),
    ("ops", "Servers, deployments and scale-out.", ["ops"]),
]
ROOT_COMMANDS = ["sample"]  # modules whose `register_root(app)` adds a top-level command


def _build() -> None:
    for name, help_text, modules in GROUPS:
        sub = typer.Typer(help=help_text, no_args_is_help=True, pretty_exceptions_enable=False)
        for entry in modules:
            module, _, function = entry.partition(":")
            getattr(importlib.import_module(f"pipelines.commands.{module}"), function or "register")(sub)
        app.add_typer(sub, name=name)
    for module in ROOT_COMMANDS:
        importlib.import_module(f"pipelines.commands.{module}").register_root(app)


_build()


def main() -> None:
    """Run the CLI; user-caused errors print one clear message (no traceback) and exit non-zero."""
    from echo_core.errors import EchoForgeError, disk_full_error

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        try:
            app()  # standalone: click prints usage errors itself (exit 2) and calls sys.exit
        except OSError as exc:  # a full disk met outside the atomic writers (a library's own file write)
            full = disk_full_error(exc, exc.filename)
            if full is None:
                raise
            raise full from exc
    except EchoForgeError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
