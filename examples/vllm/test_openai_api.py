"""The three calls of ClearML-Serving's vllm example against a served endpoint: chat, completion, models.

python examples/vllm/test_openai_api.py [--url http://127.0.0.1:8080] [--model test_vllm]
"""

import argparse

from openai import OpenAI


def main(model_name: str, url: str) -> None:
    client = OpenAI(api_key="-")
    client.base_url = f"{url}/serve/openai/v1"

    chat = client.chat.completions.create(
        model=model_name,
        messages=[{"role": "system", "content": ""}, {"role": "user", "content": "Hi there, goodman!"}],
        temperature=1.0,
        max_tokens=64,
        top_p=1.0,
    )
    print(f"ChatCompletion:\n  {chat.choices[0].message.content}\n")

    completion = client.completions.create(
        model=model_name, prompt="Hi there, goodman!", temperature=1.0, max_tokens=32
    )
    print(f"Completion:\n  {completion.choices[0].text}\n")

    print("Models:")
    print(
        "\n".join(
            map(str, client.models.list(extra_body={"stream": False, "model": model_name, "prompt": "test"}).data)
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--model", default="test_vllm")
    args = parser.parse_args()
    main(args.model, args.url)
