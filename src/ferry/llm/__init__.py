"""LLM serving: ferry's own engine loop that batches per decoding step, and the OpenAI API's shapes.

- ``params``: what a generation request asks for (``SamplingParams``) and what each step yields (``Step``).
- ``sampling``: one sequence's next token from its logits (temperature, top-k/p, min-p, penalties, seed).
- ``text``: token ids to text without splitting a UTF-8 character; stop strings caught across tokens.
- ``grammar``: ``response_format`` (a JSON schema, or any JSON object) as a mask on each step's tokens (llguidance).
- ``model``: a Hugging Face folder or a GGUF file loaded with transformers, on the device and dtype it runs.
- ``batch``: the running sequences' KV caches as one left-padded batch; prefill, one decoding step, leave.
- ``loop``: the engine loop that owns the running sequences of one loaded version.
- ``openai_api``: OpenAI request bodies checked and turned into generation requests.
- ``openai_answers``: OpenAI's answers, stream chunks, model cards and embeddings lists built.

Nothing here knows HTTP: the OpenAI routes (``rest/openai.py``) and the data plane call in.
"""
