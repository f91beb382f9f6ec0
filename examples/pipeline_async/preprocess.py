"""Server-side code for the async pipeline endpoint (engine custom_async, no model).

`process` asks /pipeline_a/ and /pipeline_b/ at the same time and waits for both; `postprocess` answers
{"y": mean of the two first predictions, "a": answer of a, "b": answer of b}.
"""

import asyncio
from typing import Any


class Preprocess:
    async def process(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> Any:
        # under custom_async, send_request returns an awaitable: both requests run concurrently
        predict_a = self.send_request(endpoint="/pipeline_a/", version=None, data=data)
        predict_b = self.send_request(endpoint="/pipeline_b/", version=None, data=data)
        predict_a, predict_b = await asyncio.gather(predict_a, predict_b)
        if not predict_a or not predict_b:
            raise ValueError("Error requesting inference endpoint pipeline_a/pipeline_b")
        return [predict_a, predict_b]

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        answer_a, answer_b = data
        return dict(y=0.5 * answer_a["y"][0] + 0.5 * answer_b["y"][0], a=answer_a, b=answer_b)

    async def send_request(self, endpoint, version=None, data=None):
        # placeholder: ferry replaces it with an awaitable call to another endpoint of the same service
        raise RuntimeError("send_request is provided by the server")
