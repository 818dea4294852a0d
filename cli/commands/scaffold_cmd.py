"""``gnomon plugins new`` (generate a plugin project) and ``gnomon plugins hooks`` (the hook reference).

Both are added to the ``plugins`` group of :mod:`gnomon.cli.commands.plugins_cmd`. The
project templates live in ``gnomon/cli/templates/plugin`` (package data): every
``*.tmpl`` file is rendered by replacing ``{{key}}`` placeholders, a path component
``__module__`` becomes the plugin's module name, and ``gitignore`` becomes ``.gitignore``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from ..main import handle_errors
from ..output import console
from .plugins_cmd import plugins_app

_PROJECT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@dataclass(frozen=True)
class PluginNames:
    """Every name a generated project uses, derived from the project name.

    ``gnomon-noise`` -> distribution ``gnomon-noise``, plugin (entry point) ``noise``,
    module ``gnomon_noise``, task ``noise``.
    """

    dist_name: str
    plugin_name: str
    module: str
    task_name: str
    task_const: str
    schema_class: str
    description: str
    hook_api: str
    hook_api_major: str
    gnomon_version: str


def plugin_names(project: str, *, task: str | None = None, description: str | None = None) -> PluginNames:
    """Derive the names for project ``project``; raises :class:`GnomonError` for unusable names."""
    from gnomon.core import HOOK_API_VERSION, __version__
    from gnomon.core.errors import GnomonError
    from gnomon.core.registry import NAME_RE

    if not _PROJECT_NAME.match(project):
        raise GnomonError(f"plugin name {project!r}: use letters, digits, '-', '_' or '.', starting with a letter "
                          "(for example 'gnomon-noise')")
    snake = re.sub(r"[-.]+", "_", project.lower())
    plugin = snake[len("gnomon_"):] if snake.startswith("gnomon_") and len(snake) > len("gnomon_") else snake
    task_name = task or plugin
    if not NAME_RE.match(task_name):
        raise GnomonError(f"task name {task_name!r} must be lower_snake_case (letters, digits, underscores, "
                          "starting with a letter); choose one with --task")
    camel = "".join(part.capitalize() for part in task_name.split("_") if part)
    release = re.match(r"^\d+(\.\d+)*", __version__)
    return PluginNames(
        dist_name=project,
        plugin_name=plugin,
        module=f"gnomon_{plugin}",
        task_name=task_name,
        task_const=f"{task_name.upper()}_TASK",
        schema_class=f"{camel}Schema",
        description=(description or f"A gnomon plugin adding the '{task_name}' attack task.").replace('"', "'"),
        hook_api=HOOK_API_VERSION,
        hook_api_major=HOOK_API_VERSION.split(".")[0],
        gnomon_version=release.group(0) if release and not __version__.startswith("0.0.0") else "0.1",
    )


def template_root():
    """The plugin project template folder (a :class:`importlib.resources` traversable)."""
    from importlib.resources import files

    return files("gnomon.cli") / "templates" / "plugin"


def _walk(node, prefix: tuple[str, ...] = ()):
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.name == "__pycache__":
            continue
        if child.is_dir():
            yield from _walk(child, prefix + (child.name,))
        else:
            yield prefix + (child.name,), child


def _target_path(parts: tuple[str, ...], names: PluginNames) -> Path:
    out = []
    for part in parts:
        part = part.replace("__module__", names.module)
        if part.endswith(".tmpl"):
            part = part[: -len(".tmpl")]
        if part == "gitignore":
            part = ".gitignore"
        out.append(part)
    return Path(*out)


def render(text: str, values: dict[str, str], source: str) -> str:
    """Replace ``{{key}}`` placeholders; an unknown key is an error naming the template."""

    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            from gnomon.core.errors import GnomonError

            raise GnomonError(f"template {source}: unknown placeholder {{{{{key}}}}}")
        return values[key]

    return _PLACEHOLDER.sub(sub, text)


def generate_plugin(project: str, dest: str | Path = ".", *, task: str | None = None,
                    description: str | None = None) -> Path:
    """Write a ready plugin project into ``dest/project`` and return its path.

    The folder must not exist yet (or be empty). Files are rendered into a temporary
    sibling folder first and moved into place at the end, so a failure leaves nothing behind.
    """
    import shutil
    import tempfile

    from gnomon.core.errors import GnomonError

    names = plugin_names(project, task=task, description=description)
    dest = Path(dest).expanduser()
    target = dest / project
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise GnomonError(f"{target} already exists and is not empty; choose another name or --dest")
    dest.mkdir(parents=True, exist_ok=True)
    values = asdict(names)
    staging = Path(tempfile.mkdtemp(prefix=f".{project}-", dir=dest))
    try:
        for parts, node in _walk(template_root()):
            out = staging / _target_path(parts, names)
            out.parent.mkdir(parents=True, exist_ok=True)
            if parts[-1].endswith(".tmpl"):
                out.write_text(render(node.read_text(encoding="utf-8"), values, "/".join(parts)), encoding="utf-8")
            else:
                out.write_bytes(node.read_bytes())
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _registered_task_plugin(task_name: str) -> str | None:
    """The plugin already providing ``task_name`` in this installation, if any."""
    from .. import state

    task = state.engine().registry.tasks.get(task_name)
    return task.plugin if task is not None else None


@plugins_app.command("new")
@handle_errors
def new_plugin(
    name: str = typer.Argument(..., help="Project (distribution) name, e.g. 'gnomon-noise'."),
    dest: Path = typer.Option(Path("."), "--dest", "-d", help="Folder to create the project in."),
    task: str | None = typer.Option(None, "--task", help="Name of the sample task (default: from NAME)."),
    description: str | None = typer.Option(None, "--description", help="One-line description."),
) -> None:
    """Generate a ready plugin project: pyproject with entry point, a sample attack task, tests, README."""
    from gnomon.core.errors import GnomonError

    names = plugin_names(name, task=task, description=description)
    owner = _registered_task_plugin(names.task_name)
    if owner is not None:
        raise GnomonError(f"task '{names.task_name}' is already provided by plugin '{owner}'; "
                          "choose another sample task name with --task")
    target = generate_plugin(name, dest, task=task, description=description)
    out = console()
    out.print(f"created plugin project [bold]{target}[/bold]")
    out.print(f"  plugin [cyan]{names.plugin_name}[/cyan] (module {names.module}), "
              f"sample task [cyan]{names.task_name}[/cyan]")
    out.print("next steps:")
    out.print(f"  cd {target}")
    out.print("  pip install -e .")
    out.print("  gnomon plugins list")
    out.print(f"  gnomon tasks show {names.task_name}")
    out.print("  pytest")


@plugins_app.command("hooks")
@handle_errors
def show_hooks(
    markdown: bool = typer.Option(False, "--markdown", help="Print the Markdown reference (docs/hooks.md)."),
) -> None:
    """Print the hook reference: every hook a plugin can implement, from the hook specifications."""
    import sys

    from gnomon.core import hookdoc

    sys.stdout.write(hookdoc.render_markdown() if markdown else hookdoc.render_text())


def install(app: typer.Typer) -> None:
    """Nothing to add to the root app: the commands above live in the ``plugins`` group."""
