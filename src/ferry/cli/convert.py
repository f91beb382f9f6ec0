"""`ferry model convert`: a saved Hugging Face model to a checked ONNX file, plus the lines that serve it."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from rich.markup import escape

from ferry.cli.context import Context
from ferry.cli.output import err_console
from ferry.errors import InvalidInput


def register(msub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ferry.convert import TASKS  # numpy only: torch and transformers load when the command runs

    p = msub.add_parser(
        "convert",
        parents=[common],
        help="export a saved Hugging Face model to ONNX, check it against PyTorch, print the add line",
        description="Export a transformers model folder (save_pretrained) to ONNX with dynamic batch and "
        "sequence axes, compare ONNX Runtime with PyTorch on sample sentences, and print the `ferry model "
        "upload` and `ferry model add --engine onnxruntime` lines that serve it. Needs `pip install 'ferry[hf]'`.",
    )
    p.add_argument("--hf", required=True, type=Path, metavar="FOLDER", help="a saved transformers model folder")
    p.add_argument("--task", required=True, choices=list(TASKS), help="logits for classification, else hidden states")
    p.add_argument("--output", required=True, type=Path, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--atol", type=float, default=1e-3, help="largest accepted |PyTorch - ONNX| (default: 1e-3)")
    p.add_argument("--endpoint", help="endpoint name in the printed add line (default: the output file's stem)")
    p.add_argument("--name", help="model name in the printed upload/add lines (default: the output file's stem)")
    p.add_argument("--project", default="", help="model project in the printed upload/add lines")
    p.add_argument("--preprocess", help="Preprocess file or folder for the printed add line")
    q = p.add_argument_group("int8 (text-classification only)")
    q.add_argument("--quantize", choices=["int8"], help="also write OUTPUT's NAME.int8.onnx (dynamic quantisation)")
    q.add_argument("--samples", type=Path, metavar="FILE", help="check sentences, one a line (default: the example's)")
    q.add_argument("--min-agreement", type=float, default=0.98, help="least int8/fp32 argmax agreement (default: 0.98)")
    q.add_argument("--max-prob-diff", type=float, default=0.05, help="largest probability difference (default: 0.05)")
    q.add_argument(
        "--min-speedup",
        type=float,
        default=1.2,
        help="int8 timed under this many times fp32's speed on this CPU: the printed lines serve fp32 (default: 1.2)",
    )
    p.set_defaults(func=convert)


def convert(ctx: Context, args: argparse.Namespace) -> None:
    from ferry.convert import command_line, shape_text
    from ferry.convert import convert as run
    from ferry.quantize import quantize, read_samples

    if args.opset < 7 or args.atol < 0 or args.min_speedup < 0:
        raise InvalidInput("--opset must be 7 or more, --atol and --min-speedup 0 or more")
    if args.quantize and args.task != "text-classification":
        raise InvalidInput("--quantize checks argmax and probabilities: use it with --task text-classification")
    samples = read_samples(args.samples) if args.quantize else ()  # a bad file fails before the export
    done = run(args.hf, args.task, args.output, args.opset, args.atol, progress=_progress)
    name = args.name or args.output.stem
    print(
        f"max abs difference PyTorch vs ONNX Runtime: {done.max_abs_diff:.3g} "
        f"(--atol {args.atol:g}, {done.samples} sentences in one padded batch)"
    )
    inputs = " ".join(done.input_names)
    print(f"wrote {done.output}: inputs {inputs}, output {done.output_name} {shape_text(done.output_size)}")
    if args.quantize:
        int8 = quantize(done.output, args.hf, samples, args.min_agreement, args.max_prob_diff, progress=_progress)
        print(f"int8 vs fp32: {int8.summary()} (--min-agreement {args.min_agreement:g}, "
              f"--max-prob-diff {args.max_prob_diff:g})")  # fmt: skip
        print(f"wrote {int8.output}: int8 weights ({_mb(int8.output)} MB; fp32 {_mb(done.output)} MB)")
        if int8.speed is not None:
            print(int8.speed.summary())
        if int8.speed is not None and int8.speed.speedup < args.min_speedup:
            print(f"keep fp32: int8 is under --min-speedup {args.min_speedup:g} here, as {int8.speed.why_slow()}; "
                  f"the lines below serve {done.output.name} (the int8 file stays for a CPU with VNNI)")  # fmt: skip
        else:
            done = replace(done, output=int8.output)
    print("serve it with:")
    print(command_line(done.upload_args(name, args.project)))
    print(command_line(done.add_args(args.endpoint or args.output.stem, name, args.project, args.preprocess)))


def _progress(message: str) -> None:
    err_console.print(f"[dim]{escape(message)}[/dim]", highlight=False)


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f}"
