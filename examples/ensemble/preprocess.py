"""Server-side code for the ensemble endpoint (engine custom, no model): average two other endpoints.

The request body goes to /ensemble_a/ and /ensemble_b/ unchanged; each answers {"y": [..]}; we answer
{"y": [..]} with their element-wise mean.
"""

from typing import Any


class Preprocess:
    def process(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        predict_a = self.send_request(endpoint="/ensemble_a/", version=None, data=data)
        predict_b = self.send_request(endpoint="/ensemble_b/", version=None, data=data)
        if not predict_a or not predict_b:
            raise ValueError("Error requesting inference endpoint ensemble_a/ensemble_b")
        return [predict_a, predict_b]

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        answer_a, answer_b = data
        return dict(y=[(a + b) / 2 for a, b in zip(answer_a["y"], answer_b["y"], strict=True)])

    def send_request(self, endpoint, version=None, data=None):
        # placeholder: ferry replaces it with a call to another endpoint of the same service
        raise RuntimeError("send_request is provided by the server")
