"""ModelEndpointView: the read-only ``self.model_endpoint`` a Preprocess sees, with ClearML's field names."""

from __future__ import annotations

from typing import Any

from ferry.control.spec import EndpointSpec, TensorSpec

CLEARML_FIELDS = (
    "engine_type",
    "serving_url",
    "model_id",
    "version",
    "preprocess_artifact",
    "input_size",
    "input_type",
    "input_name",
    "output_size",
    "output_type",
    "output_name",
    "auxiliary_cfg",
)
"""ClearML-Serving's ModelEndpoint fields, which ClearML users' code reads from ``self.model_endpoint``."""


class ModelEndpointView:
    """Read-only ``self.model_endpoint``: every EndpointSpec attribute plus ClearML's ModelEndpoint fields.

    Like ClearML's, the tensor fields are lists (one entry per input or output) or None when not given.
    """

    __slots__ = ("_spec",)
    _spec: EndpointSpec

    def __init__(self, spec: EndpointSpec) -> None:
        object.__setattr__(self, "_spec", spec)

    @property
    def spec(self) -> EndpointSpec:
        return self._spec

    @property
    def engine_type(self) -> str:
        return self._spec.engine

    @property
    def serving_url(self) -> str:
        """``name/version``, or ``name`` for an endpoint without a version (ClearML's rule)."""
        return self._spec.key

    @property
    def preprocess_artifact(self) -> str | None:
        return None if self._spec.preprocess is None else self._spec.preprocess.url

    @property
    def input_size(self) -> list[list[int] | None] | None:
        return _column(self._spec.inputs, "shape")

    @property
    def input_type(self) -> list[str | None] | None:
        return _column(self._spec.inputs, "dtype")

    @property
    def input_name(self) -> list[str | None] | None:
        return _column(self._spec.inputs, "name")

    @property
    def output_size(self) -> list[list[int] | None] | None:
        return _column(self._spec.outputs, "shape")

    @property
    def output_type(self) -> list[str | None] | None:
        return _column(self._spec.outputs, "dtype")

    @property
    def output_name(self) -> list[str | None] | None:
        return _column(self._spec.outputs, "name")

    @property
    def auxiliary_cfg(self) -> dict[str, Any] | str | None:
        """The aux config as the user wrote it (text) when given so, else its dict; None when empty."""
        if self._spec.aux_config_text is not None:
            return self._spec.aux_config_text
        return dict(self._spec.aux_config) or None

    def as_dict(self, remove_null_entries: bool = False) -> dict[str, Any]:
        """ClearML's ``ModelEndpoint.as_dict``: the ClearML fields by name."""
        fields = {name: getattr(self, name) for name in CLEARML_FIELDS}
        return {k: v for k, v in fields.items() if v is not None} if remove_null_entries else fields

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_spec":
            raise AttributeError(name)
        try:
            return getattr(self._spec, name)
        except AttributeError:
            known = ", ".join(sorted({*EndpointSpec.model_fields, "key", *CLEARML_FIELDS}))
            raise AttributeError(f"model_endpoint has no field {name!r}; it has: {known}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"model_endpoint is read-only (cannot set {name!r}): change the endpoint with `ferry model add`, "
            "or keep your own values on self"
        )

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ModelEndpointView, (self._spec,))

    def __repr__(self) -> str:
        return f"ModelEndpointView({self._spec!r})"


def _column(tensors: tuple[TensorSpec, ...], field: str) -> list[Any] | None:
    values = [getattr(tensor, field) for tensor in tensors]
    if all(value is None for value in values):
        return None
    return [list(value) if isinstance(value, tuple) else value for value in values]
