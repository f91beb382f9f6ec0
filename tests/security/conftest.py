"""The serving fixtures, shared with the data-plane tests."""

from tests.serving.conftest import Service, service  # noqa: F401
