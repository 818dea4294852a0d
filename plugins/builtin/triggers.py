"""Builtin part: backdoor triggers, registered as ``AttackSpec(kind="trigger")``.

A trigger factory takes options and returns ``apply(x) -> x_triggered`` working on a batch
of images in NHWC layout with values in [0, 1] (grayscale ``C=1`` or RGB ``C=3``; an NHW
batch is accepted too and returned as NHW). The builtin triggers wrap ART 1.20's image
perturbations:

- ``pattern`` (default): ART ``add_pattern_bd``, a 4-pixel checkerboard near the
  bottom-right corner.
- ``single_pixel``: ART ``add_single_bd``, one pixel near the bottom-right corner.
- ``image``: ART ``insert_image``, pastes a small picture (the bundled 8x8 warning sign,
  or any image file via ``path``) blended into the image.

Plugins add triggers the same way, through their own ``register_attacks`` hook; every
task with a ``trigger`` parameter accepts them. ART is imported only when a trigger is
applied.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from gnomon.core.errors import GnomonError
from gnomon.core.hookspecs import hookimpl
from gnomon.core.registry import AttackSpec

if TYPE_CHECKING:  # numpy is imported where it is used: listing tasks stays cheap
    import numpy as np

#: The AttackSpec kind of backdoor triggers.
TRIGGER_KIND = "trigger"

#: The trigger tasks use when none is named.
DEFAULT_TRIGGER = "pattern"

#: The picture the ``image`` trigger pastes unless given ``path`` (8x8 RGBA warning sign).
BUNDLED_IMAGE = Path(__file__).resolve().parent / "data" / "triggers" / "alert.png"

POSITIONS = ("bottom_right", "bottom_left", "top_right", "top_left", "center", "random")


class TriggerError(GnomonError):
    """A trigger was given bad options or images it cannot be applied to."""


# -- helpers shared by the triggers --------------------------------------------------


def _as_batch(x: Any, trigger: str) -> tuple[np.ndarray, bool]:
    """``x`` as a float NHWC array, and whether it came in as NHW (to give it back that way)."""
    import numpy as np

    arr = np.asarray(x)
    if arr.ndim == 3:
        return arr[..., None], True
    if arr.ndim != 4:
        raise TriggerError(f"trigger '{trigger}' expects a batch of images (n, height, width, channels) "
                           f"or (n, height, width); got shape {arr.shape}")
    if arr.shape[-1] not in (1, 3):
        raise TriggerError(f"trigger '{trigger}' expects channels-last images with 1 (grayscale) or 3 (RGB) "
                           f"channels; got shape {arr.shape}")
    return arr, False


def _restore(out: np.ndarray, squeeze: bool, dtype: np.dtype) -> np.ndarray:
    out = out.astype(dtype, copy=False)
    return out[..., 0] if squeeze else out


def _check_int(name: str, value: Any, minimum: int) -> int:
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not (
            isinstance(value, float) and value.is_integer()):
        raise TriggerError(f"trigger option '{name}' must be an integer; got {value!r}")
    value = int(value)
    if value < minimum:
        raise TriggerError(f"trigger option '{name}' must be >= {minimum}; got {value}")
    return value


def _check_unit(name: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TriggerError(f"trigger option '{name}' must be a number in [0, 1]; got {value!r}") from None
    if not 0.0 <= value <= 1.0:
        raise TriggerError(f"trigger option '{name}' must be in [0, 1] (images are scaled to [0, 1]); got {value}")
    return value


def _describe(fn: Callable, name: str, options: dict[str, Any]) -> Callable:
    fn.trigger_name = name  # type: ignore[attr-defined]
    fn.trigger_options = dict(options)  # type: ignore[attr-defined]
    fn.__name__ = f"{name}_trigger"
    return fn


# -- pattern and single pixel (ART add_pattern_bd / add_single_bd) ---------------------


def pattern_trigger(distance: int = 2, pixel_value: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """ART's checkerboard backdoor: 4 pixels set to ``pixel_value`` near the bottom-right corner.

    The pixels are ``(h-d, w-d)``, ``(h-d-1, w-d-1)``, ``(h-d, w-d-2)`` and ``(h-d-2, w-d)``
    with ``d = distance``, in every channel. Images must be at least ``distance + 2`` pixels
    high and wide.
    """

    distance = _check_int("distance", distance, 1)
    pixel_value = _check_unit("pixel_value", pixel_value)

    def apply(x: np.ndarray) -> np.ndarray:
        batch, squeeze = _as_batch(x, "pattern")
        _check_fits(batch, distance + 2, "pattern", "distance + 2")
        from art.attacks.poisoning.perturbations import add_pattern_bd

        return _restore(add_pattern_bd(batch, distance=distance, pixel_value=pixel_value), squeeze, batch.dtype)

    return _describe(apply, "pattern", {"distance": distance, "pixel_value": pixel_value})


def single_pixel_trigger(distance: int = 2, pixel_value: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """ART's single-pixel backdoor: pixel ``(h-distance, w-distance)`` set to ``pixel_value`` in every channel."""

    distance = _check_int("distance", distance, 1)
    pixel_value = _check_unit("pixel_value", pixel_value)

    def apply(x: np.ndarray) -> np.ndarray:
        batch, squeeze = _as_batch(x, "single_pixel")
        _check_fits(batch, distance, "single_pixel", "distance")
        from art.attacks.poisoning.perturbations import add_single_bd

        return _restore(add_single_bd(batch, distance=distance, pixel_value=pixel_value), squeeze, batch.dtype)

    return _describe(apply, "single_pixel", {"distance": distance, "pixel_value": pixel_value})


def _check_fits(batch: np.ndarray, needed: int, trigger: str, what: str) -> None:
    height, width = batch.shape[1:3]
    if height < needed or width < needed:
        raise TriggerError(f"trigger '{trigger}' needs images at least {what} = {needed} pixels high and wide; "
                           f"got {height}x{width}")


# -- image insertion (ART insert_image) -------------------------------------------------


def _load_trigger_alpha(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """The trigger picture's alpha channel (h, w) after the same resize ART applies."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        rgba = im.convert("RGBA")
        if size is not None:
            rgba = rgba.resize((size[1], size[0]))
        return np.asarray(rgba)[..., 3].copy()


def _parse_size(size: Any) -> tuple[int, int] | None:
    import numpy as np

    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    if isinstance(size, str):
        parts = size.lower().replace("x", ",").split(",")
        size = tuple(p.strip() for p in parts if p.strip())
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise TriggerError(f"trigger option 'size' must be an integer or [height, width]; got {size!r}") from None
    if h < 1 or w < 1:
        raise TriggerError(f"trigger option 'size' must be positive; got {size!r}")
    return h, w


def image_trigger(path: str | None = None, size: Any = None, blend: float = 0.8, position: str = "bottom_right",
                  margin: int = 1, x_shift: int | None = None, y_shift: int | None = None,
                  seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """ART's image-insertion backdoor: paste a picture onto each image, blended with factor ``blend``.

    Args:
        path: image file to insert (any format PIL reads; transparency is kept). Default: the
            bundled 8x8 warning sign.
        size: resize the picture to ``size`` (an int or ``[height, width]``) first.
        blend: ART's blending factor (1.0 pastes the picture as is).
        position: ``bottom_right`` (default), ``bottom_left``, ``top_right``, ``top_left``,
            ``center`` or ``random`` (a place per image drawn from ``seed``).
        margin: pixels between the picture and the image border for corner positions.
        x_shift, y_shift: explicit column/row of the picture's top-left corner (override ``position``).
        seed: seed of the random placement.

    Only the pixels under the picture's opaque part change; all others keep their exact value.
    """
    import numpy as np

    source = Path(path).expanduser() if path else BUNDLED_IMAGE
    if not source.is_file():
        raise TriggerError(f"trigger option 'path': image file '{source}' does not exist")
    size_hw = _parse_size(size)
    blend = _check_unit("blend", blend)
    if position not in POSITIONS:
        raise TriggerError(f"trigger option 'position' must be one of {', '.join(POSITIONS)}; got {position!r}")
    margin = _check_int("margin", margin, 0)
    if (x_shift is None) != (y_shift is None):
        raise TriggerError("trigger options 'x_shift' and 'y_shift' go together: give both or neither")
    if x_shift is not None:
        x_shift, y_shift = _check_int("x_shift", x_shift, 0), _check_int("y_shift", y_shift, 0)
    seed = _check_int("seed", seed, 0)
    try:
        alpha = _load_trigger_alpha(source, size_hw)
    except OSError as exc:
        raise TriggerError(f"trigger option 'path': cannot read image '{source}': {exc}") from None
    opaque = alpha > 0
    trig_h, trig_w = alpha.shape

    def placements(n: int, height: int, width: int) -> np.ndarray:
        """(n, 2) array of (row, column) of the picture's top-left corner."""
        if x_shift is not None:
            rows, cols = np.full(n, y_shift), np.full(n, x_shift)
        elif position == "random":
            rng = np.random.default_rng(seed)
            rows = rng.integers(0, height - trig_h + 1, size=n)
            cols = rng.integers(0, width - trig_w + 1, size=n)
        else:
            row = {"top": margin, "bottom": height - trig_h - margin, "center": (height - trig_h) // 2}
            col = {"left": margin, "right": width - trig_w - margin, "center": (width - trig_w) // 2}
            v, _, h = position.partition("_")
            rows, cols = np.full(n, row[v]), np.full(n, col[h or v])
        if (rows < 0).any() or (cols < 0).any() or (rows + trig_h > height).any() or (cols + trig_w > width).any():
            raise TriggerError(f"trigger 'image': the {trig_h}x{trig_w} picture does not fit in {height}x{width} "
                               f"images at that position (position={position!r}, margin={margin}, "
                               f"x_shift={x_shift}, y_shift={y_shift}); use a smaller 'size'")
        return np.stack([rows, cols], axis=1)

    def apply(x: np.ndarray) -> np.ndarray:
        batch, squeeze = _as_batch(x, "image")
        from art.attacks.poisoning.perturbations import insert_image

        n, height, width, channels = batch.shape
        mode = "L" if channels == 1 else "RGB"
        where = placements(n, height, width)
        out = np.array(batch, dtype=batch.dtype, copy=True)
        for i in range(n):
            r, c = int(where[i, 0]), int(where[i, 1])
            pasted = insert_image(batch[i], backdoor_path=str(source), channels_first=False, random=False,
                                  x_shift=c, y_shift=r, size=size_hw, mode=mode, blend=blend)
            # keep ART's result only under the picture: elsewhere ART's 8-bit round trip would
            # nudge untouched pixels by up to 1/255.
            window = (slice(r, r + trig_h), slice(c, c + trig_w))
            out[i][window][opaque] = pasted[window][opaque]
        return _restore(out, squeeze, batch.dtype)

    options = {"path": str(path) if path else None, "size": list(size_hw) if size_hw else None, "blend": blend,
               "position": position, "margin": margin, "x_shift": x_shift, "y_shift": y_shift, "seed": seed}
    return _describe(apply, "image", options)


# -- making triggers by name ------------------------------------------------------------


def trigger_option_names(factory: Callable) -> list[str]:
    """The option names a trigger factory accepts (its keyword parameters)."""
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def make_trigger(registry: Any, name: str, options: dict[str, Any] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Build the registered trigger ``name`` with ``options``.

    Raises :class:`TriggerError` naming the trigger and the options it accepts when an
    option is unknown or has a bad value, and ``UnknownNameError`` for an unknown trigger.
    """
    spec = registry.get("attack", name)
    if getattr(spec, "kind", None) != TRIGGER_KIND:
        raise TriggerError(f"attack '{name}' is a '{spec.kind}', not a trigger")
    options = dict(options or {})
    params = inspect.signature(spec.factory).parameters.values()
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    accepted = trigger_option_names(spec.factory)
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        raise TriggerError(f"trigger '{name}' does not accept option(s) {', '.join(unknown)}; "
                           f"it accepts: {', '.join(accepted) or 'no options'}")
    try:
        fn = spec.factory(**options)
    except TriggerError:
        raise
    except (TypeError, ValueError) as exc:
        raise TriggerError(f"trigger '{name}' rejected options {options}: {exc}") from None
    if not callable(fn):
        raise TriggerError(f"trigger '{name}' (plugin '{spec.plugin}') factory returned {type(fn).__name__}, "
                           "not a function x -> x_triggered")
    return fn


@hookimpl
def register_attacks(register) -> None:
    """Register the builtin triggers: pattern (default), single_pixel and image."""
    register(AttackSpec(name="pattern", kind=TRIGGER_KIND, factory=pattern_trigger,
                        summary="ART add_pattern_bd: 4-pixel checkerboard near the bottom-right corner "
                                "(options: distance=2, pixel_value=1.0)."))
    register(AttackSpec(name="single_pixel", kind=TRIGGER_KIND, factory=single_pixel_trigger,
                        summary="ART add_single_bd: one bright pixel near the bottom-right corner "
                                "(options: distance=2, pixel_value=1.0)."))
    register(AttackSpec(name="image", kind=TRIGGER_KIND, factory=image_trigger,
                        summary="ART insert_image: paste a small picture (bundled 8x8 warning sign or 'path'), "
                                "blended (options: path, size, blend=0.8, position, margin, x_shift, y_shift, seed)."))


__all__ = ["BUNDLED_IMAGE", "DEFAULT_TRIGGER", "TRIGGER_KIND", "TriggerError", "image_trigger", "make_trigger",
           "pattern_trigger", "register_attacks", "single_pixel_trigger", "trigger_option_names"]
