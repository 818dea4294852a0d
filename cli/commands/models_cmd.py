"""``gnomon models list`` and ``gnomon models show NAME``: the registered architectures and their layers."""

from __future__ import annotations

import typer

from .. import state
from ..main import handle_errors
from ..output import console, print_json, table

models_app = typer.Typer(help="List model architectures and show their layer tables.", no_args_is_help=True)


def _parse_shape(text: str) -> tuple[int, int, int]:
    from gnomon.core.errors import ParamValidationError

    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ParamValidationError("models show", {"--input-shape": [
            f"expected HEIGHT,WIDTH,CHANNELS such as 28,28,1; got '{text}'"]})
    return shape  # type: ignore[return-value]


@models_app.command("list")
@handle_errors
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List every registered model architecture with its plugin and summary."""
    registry = state.engine().registry
    specs = [registry.models[n] for n in registry.names("model")]
    if as_json:
        print_json([{"name": s.name, "summary": s.summary, "plugin": s.plugin} for s in specs])
        return
    console().print(table(None, ["model", "plugin", "summary"], [[s.name, s.plugin, s.summary] for s in specs],
                          wrap=["summary"]))


@models_app.command("show")
@handle_errors
def show_model(
    name: str = typer.Argument(..., help="Architecture name (see 'gnomon models list')."),
    input_shape: str = typer.Option("28,28,1", "--input-shape", help="HEIGHT,WIDTH,CHANNELS to build it for."),
    classes: int = typer.Option(10, "--classes", min=2, help="Number of classes."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Build NAME and print its layer table: the index is what feature_layer_index refers to."""
    import os

    from gnomon.core.quiet import verbose

    if not verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    engine = state.engine()
    spec = engine.registry.get("model", name)
    shape = _parse_shape(input_shape)
    from gnomon.core import models as M

    model = M.build_model(engine, name, shape, classes)
    rows = M.layer_table(model)
    total = int(model.count_params())
    if as_json:
        print_json({"name": name, "plugin": spec.plugin, "summary": spec.summary, "input_shape": list(shape),
                    "classes": classes, "params": total, "layers": rows})
        return
    out = console()
    out.print(f"[bold]{name}[/bold] (plugin [cyan]{spec.plugin}[/cyan]) built for input {shape}, {classes} classes")
    out.print(spec.summary)
    out.print(table(None, ["index", "layer", "type", "output shape", "params"],
                    [[r["index"], r["name"], r["type"], r["output_shape"], f"{r['params']:,}"] for r in rows]))
    out.print(f"total parameters: {total:,}")


def install(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
