"""Server-side code for the sklearn example: JSON {"x0": .., "x1": ..} in, {"y": [..]} out."""

from typing import Any

import numpy as np


class Preprocess:
    def preprocess(self, body: dict, state: dict, collect_custom_statistics_fn=None) -> Any:
        if not isinstance(body, dict) or body.get("x0") is None or body.get("x1") is None:
            raise ValueError(f'expected a JSON object with "x0" and "x1", e.g. {{"x0": 1, "x1": 2}}; got {body!r:.80}')
        x0, x1 = body["x0"], body["x1"]
        if collect_custom_statistics_fn:  # None unless this request is sampled (`ferry metrics add --log-freq`)
            collect_custom_statistics_fn({"x0": x0, "x1": x1})
        return [[x0, x1]]

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        y = data.tolist() if isinstance(data, np.ndarray) else data
        if collect_custom_statistics_fn:
            collect_custom_statistics_fn({"y": y[0] if isinstance(y, list) and y else y})
        return dict(y=y)
