"""Server-side code for the lightgbm example: JSON {"x0": .., "x3": ..} in, {"y": class} out."""

from typing import Any

import numpy as np


class Preprocess:
    def preprocess(self, body: dict, state: dict, collect_custom_statistics_fn=None) -> Any:
        return [[body.get("x0"), body.get("x1"), body.get("x2"), body.get("x3")]]

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        # a multiclass booster returns one probability per class: answer the most probable class index
        return dict(y=int(np.argmax(data)) if isinstance(data, np.ndarray) else data)
