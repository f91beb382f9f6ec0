"""Server-side code for the xgboost example: JSON {"x0": .., "x3": ..} in, {"y": [class]} out."""

from typing import Any

import numpy as np
import xgboost as xgb


class Preprocess:
    def preprocess(self, body: dict, state: dict, collect_custom_statistics_fn=None) -> Any:
        # the engine hands a DMatrix to Booster.predict as it is
        return xgb.DMatrix([[body.get("x0"), body.get("x1"), body.get("x2"), body.get("x3")]])

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        # multi:softmax predicts the class index as a float: send it back as an int
        return dict(y=data.astype(int).tolist() if isinstance(data, np.ndarray) else data)
