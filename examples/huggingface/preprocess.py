"""Server-side code for the sentiment example: {"text": ".."} in, {"label": .., "scores": [neg, pos]} out."""

from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

LABELS = ("negative", "positive")
MAX_TOKENS = 128


class Preprocess:
    def __init__(self) -> None:
        # tokenizer.json sits next to this file: `train.py --preprocess-dir` lays the folder out
        self.tokenizer = Tokenizer.from_file(str(Path(__file__).parent / "tokenizer.json"))
        self.tokenizer.no_padding()  # its saved setting pads every text to 128 tokens: 6x slower
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)

    def preprocess(self, body: dict, state: dict, collect_custom_statistics_fn=None) -> dict[str, np.ndarray]:
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError('send {"text": "some sentence"}')
        encoding = self.tokenizer.encode(text)
        return {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
            "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
        }

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        logits = np.asarray(data, dtype=np.float64).reshape(-1)
        scores = np.exp(logits - logits.max())
        scores /= scores.sum()
        return {"label": LABELS[int(scores.argmax())], "scores": [float(s) for s in scores]}
