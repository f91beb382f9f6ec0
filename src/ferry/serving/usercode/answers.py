"""What ``send_request`` to an OpenAI route returns: the JSON answer, readable as a dict and by attribute."""

from __future__ import annotations

from typing import Any


class AttrDict(dict[str, Any]):
    """A JSON object whose keys read as attributes too, all the way down (``answer.choices[0].message.content``,
    as ClearML's vllm readme reads the answer, and ``answer["choices"][0]``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the answer has no field {name!r}; it has {', '.join(self) or 'none'}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def readable(value: Any) -> Any:
    """``value`` (parsed JSON) with every object an AttrDict."""
    if isinstance(value, dict):
        return AttrDict({key: readable(item) for key, item in value.items()})
    if isinstance(value, list):
        return [readable(item) for item in value]
    return value
