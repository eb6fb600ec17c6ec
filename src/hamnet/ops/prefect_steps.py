"""Prefect deployment steps that hamnet's ``prefect.yaml`` names.

A pull step is any importable function; Prefect calls it on the worker, in the flow
run's process, before it loads the flow. :func:`set_project_directory` is the pull step
of the local deployments: ``prefect deploy`` records the project folder with a build
step (``run_shell_script: pwd``), and the worker changes into that folder, so the
worker needs no environment variable and can be started from any folder::

    build:
      - prefect.deployments.steps.run_shell_script:
          id: project-dir
          script: pwd
    pull:
      - hamnet.ops.prefect_steps.set_project_directory:
          directory: "{{ project-dir.stdout }}"

Unlike Prefect's own ``set_working_directory``, it refuses an empty or missing folder
with a message that names the folder it expected, instead of running the flow from
the worker's temp folder (where the entrypoint is not found).
"""

from __future__ import annotations

import os
from pathlib import Path

from hamnet.core.errors import ConfigError

PROJECT_DIR_ENV = "HAMNET_PROJECT_DIR"
"""Environment variable that, when set on the worker, overrides the recorded folder."""

FLOW_ENTRYPOINT_FILE = "flows/hamnet_optimize.py"
"""The file a project folder must hold (``prefect.yaml``'s entrypoint)."""


def resolve_project_directory(
    directory: str,
    *,
    honor_override: bool = True,
    required_file: str = FLOW_ENTRYPOINT_FILE,
) -> Path:
    """The project folder a flow run must run from, checked on this machine.

    Args:
        directory: The folder recorded at deploy time (or cloned by a pull step).
        honor_override: Let a non-empty ``$HAMNET_PROJECT_DIR`` on the worker win over
            ``directory`` (the local deployments); off for a cloned checkout.
        required_file: A file, relative to the folder, that must exist in it.

    Returns:
        The folder, absolute.

    Raises:
        ConfigError: If the folder is empty, missing, not a folder, or lacks
            ``required_file``; the message names the folder expected and what was found.
    """
    override = os.environ.get(PROJECT_DIR_ENV, "").strip() if honor_override else ""
    chosen = override or str(directory or "").strip()
    origin = (
        f"${PROJECT_DIR_ENV} on the worker"
        if override
        else "the folder recorded by `prefect deploy` in the deployment's pull step"
    )
    if not chosen:
        raise ConfigError(
            f"the project folder ({origin}) must be a folder holding {required_file}, "
            "but got an empty value: deploy from the project folder (`prefect deploy "
            f"--all` next to prefect.yaml) or set {PROJECT_DIR_ENV} on the worker"
        )
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        found = "a file" if path.exists() else "nothing"
        raise ConfigError(
            f"the project folder ({origin}) must be a folder holding {required_file} on "
            f"this worker ({_host()}), but got {str(path)!r}, where there is {found}: run "
            f"the worker on the machine the project was deployed from, redeploy, or set "
            f"{PROJECT_DIR_ENV}"
        )
    if not (path / required_file).is_file():
        raise ConfigError(
            f"the project folder ({origin}) must hold {required_file}, but {str(path)!r} "
            f"has no such file on this worker ({_host()})"
        )
    return path


def set_project_directory(
    directory: str, honor_override: bool = True, required_file: str = FLOW_ENTRYPOINT_FILE
) -> dict[str, str]:
    """Pull step: check the project folder, then change into it with Prefect's step.

    Args:
        directory: The folder recorded at deploy time (``{{ project-dir.stdout }}``) or
            a clone's folder (``{{ clone-project.directory }}``).
        honor_override: Let ``$HAMNET_PROJECT_DIR`` on the worker override ``directory``.
        required_file: A file the folder must hold (the flow's entrypoint).

    Returns:
        ``{"directory": <absolute folder>}``, as Prefect's ``set_working_directory``
        returns, so later steps can template ``{{ <id>.directory }}``.

    Raises:
        ConfigError: As :func:`resolve_project_directory`.
    """
    from prefect.deployments.steps import set_working_directory
    from prefect.logging.loggers import get_logger

    path = resolve_project_directory(
        directory, honor_override=_as_bool(honor_override), required_file=required_file
    )
    get_logger("hamnet").info("flow run runs from the project folder %s", path)
    return set_working_directory(str(path))


def _as_bool(value: object) -> bool:
    """A step input as a bool (YAML gives bools, templated values give strings)."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


def _host() -> str:
    import socket

    return socket.gethostname()
