"""``[data.options]``: a dataset adapter's own settings, validated by the model the adapter declares.

A dataset factory declares its options with an ``options_model`` attribute: a pydantic model class
(``extra="forbid"`` so a mistyped option is an error). The validated options, defaults filled in,
are what ``settings.data.options`` holds. An adapter without ``options_model`` takes no options.
"""

from __future__ import annotations

from difflib import get_close_matches
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from dupl_cli.core.errors import UserError
from dupl_cli.plugins import DATASETS, discover

OPTION_ERROR = "dupl_option"  # error type the settings loader turns into a line naming the option


def options_model(adapter: str) -> tuple[bool, type[BaseModel] | None]:
    """(installed, options model or None). An adapter that is not installed is reported when built."""
    plugin = discover(DATASETS).get(adapter)
    if plugin is None:
        return False, None
    factory = plugin.import_factory()  # a plugin that fails to import is one line naming it
    model = getattr(factory, "options_model", None)
    if model is not None and not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise UserError(
            f"dataset plugin {adapter!r}: options_model must be a pydantic model class, got {model!r}"
        )
    return True, model


def _error(option: str, message: str, unknown: bool = False) -> PydanticCustomError:
    # The message goes through the context: a template would format braces inside user values.
    return PydanticCustomError(
        OPTION_ERROR, "{message}", {"message": message, "option": option, "unknown": unknown}
    )


def validate_options(adapter: str, options: dict[str, Any]) -> dict[str, Any]:
    installed, model = options_model(adapter)
    if not installed:
        return options
    if model is None:
        if options:
            raise _error(next(iter(options)), f"dataset adapter {adapter!r} takes no options", unknown=True)
        return {}
    try:
        return model.model_validate(options).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        option = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = list(model.model_fields)
            close = get_close_matches(option, known, n=1)
            hint = f"; did you mean data.options.{close[0]}?" if close else ""
            message = (
                f"dataset adapter {adapter!r} has no option {option!r} (options: {', '.join(known)}){hint}"
            )
            raise _error(option, message, unknown=True) from None
        raise _error(option, f"dataset adapter {adapter!r}: {err['msg']}") from None
