"""Server-side code for the embeddings example: {"text": ".."} in, {"embedding": [384 floats]} (unit length) out."""

from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

MAX_TOKENS = 128


class Preprocess:
    def __init__(self) -> None:
        # tokenizer.json sits next to this file: `prepare.py` lays the folder out
        self.tokenizer = Tokenizer.from_file(str(Path(__file__).parent / "tokenizer.json"))
        self.tokenizer.no_padding()  # its saved setting pads every text to 128 tokens: 6x slower
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)

    def preprocess(self, body: dict, state: dict, collect_custom_statistics_fn=None) -> dict[str, np.ndarray]:
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError('send {"text": "some sentence"}')
        encoding = self.tokenizer.encode(text)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        state["attention_mask"] = mask  # postprocess pools over these tokens only
        return {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
            "attention_mask": mask,
        }

    def postprocess(self, data: Any, state: dict, collect_custom_statistics_fn=None) -> dict:
        mask = state["attention_mask"][0].astype(np.float32)  # [seq]
        hidden = np.asarray(data, dtype=np.float32)[0, : len(mask)]  # [seq, 384]; drop any batch padding
        pooled = (hidden * mask[:, None]).sum(axis=0) / max(mask.sum(), 1.0)
        pooled /= max(float(np.linalg.norm(pooled)), 1e-12)
        return {"embedding": pooled.tolist()}
