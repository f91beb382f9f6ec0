"""``ferry serve --ray``: the same service as a Ray Serve application, pre/post and models scaled apart.

One ingress deployment speaks ferry's HTTP routes and runs each endpoint's pre/post code (its replicas
follow the store like ``ferry serve`` instances do); one model deployment per endpoint version runs the
engine and the dynamic batcher. The ``ferry serve --ray`` process deploys and deletes the model
deployments as the service's revisions change. Needs ``pip install 'ferry[ray]'``.
"""

from __future__ import annotations

from ferry.errors import InvalidInput


def require() -> None:
    """Fail in one line, naming the extra, when Ray Serve is not installed."""
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        raise InvalidInput("ferry serve --ray needs Ray Serve: pip install 'ferry[ray]'") from None
