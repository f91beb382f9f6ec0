"""A Preprocess for an LLM endpoint in ClearML-Serving's shape: vLLM settings from load(), the request edited
before the model sees it."""

from collections.abc import Callable
from typing import Any


class Preprocess:
    def __init__(self):
        self.model_endpoint = None

    def load(self, local_file_name: str) -> Any | None:
        """Settings in ClearML's vllm example form; ferry honours response_role and chat_template."""
        vllm_model_config = {
            "lora_modules": None,
            "prompt_adapters": None,
            "response_role": "assistant",
            "chat_template": None,
            "return_tokens_as_token_ids": False,
            "max_log_len": None,
        }
        chat_settings = {
            "reasoning_parser": None,
            "enable_auto_tools": False,
            "tool_parser": None,
            "enable_prompt_tokens_details": False,
            "chat_template_content_format": "auto",
        }
        return {"vllm_model_config": vllm_model_config, "chat_settings": chat_settings}

    @staticmethod
    def last_system_prompt_only(messages: list) -> list:
        """Of several system prompts at the start of a conversation, keep the last."""
        leading = []
        for index, message in enumerate(messages):
            if message["role"] != "system":
                break
            leading.append(index)
        if len(leading) < 2:
            return messages
        return [m for i, m in enumerate(messages) if m["role"] != "system" or i == leading[-1]]

    async def preprocess(
        self, body: bytes | dict, state: dict, collect_custom_statistics_fn: Callable[[dict], None] | None
    ) -> Any:
        if "messages" in body["request"]:
            body["request"]["messages"] = self.last_system_prompt_only(body["request"]["messages"])
        return body
