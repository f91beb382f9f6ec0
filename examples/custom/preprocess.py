"""Server-side code for the custom example: the model is ours to load and to call.

JSON {"features": [[sepal length, sepal width, petal length, petal width], ...]} in, {"y": [class, ...]} out.
"""

from typing import Any

import joblib
import numpy as np


class Preprocess:
    def __init__(self):
        self._model = None

    def load(self, local_file_name: str) -> None:
        # called once with the local copy of the registered model file
        self._model = joblib.load(local_file_name)

    def preprocess(self, body: dict, state: dict, collect_custom_statistics_fn=None) -> Any:
        return np.asarray(body["features"], dtype=float)

    def process(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        # the custom engine calls this instead of a model call of its own
        return self._model.predict(data)

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        return dict(y=data.tolist() if isinstance(data, np.ndarray) else data)
