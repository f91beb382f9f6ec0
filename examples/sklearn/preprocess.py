"""Server-side code for the sklearn example: JSON {"x0": .., "x1": ..} in, {"y": [..]} out."""

from typing import Any

import numpy as np


class Preprocess:
    def preprocess(self, body: dict, state: dict, collect_custom_statistics_fn=None) -> Any:
        return [[body.get("x0"), body.get("x1")]]

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        return dict(y=data.tolist() if isinstance(data, np.ndarray) else data)
