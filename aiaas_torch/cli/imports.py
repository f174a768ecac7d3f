"""`aiaas import`: bring your own model, a program written by torch.export.save or a Hugging Face text model directory, into a run directory."""

from __future__ import annotations

import zipfile

from .common import UsageError, print_json


def _names(text: str) -> list[str]:
    """Return "a,b" as ["a", "b"] (names of inputs, outputs or labels)."""
    return [v.strip() for v in text.split(",") if v.strip()]


def add_parser(sub) -> None:
    """Add the import sub-parser to `sub`; returns None."""
    from .train import add_quant_options

    p = sub.add_parser("import", help="import a torch.export program (.pt2) or a Hugging Face text model directory into a run directory",
                       description="Import PROGRAM.pt2 (written by torch.export.save, batch dimension dynamic) into a run "
                                   "directory as `aiaas train` writes one: the card records the tensor contract and the "
                                   "value ranges of the calibration samples; the program is compiled where that pays. "
                                   "Or import DIR, a Hugging Face text classifier or encoder (config.json, *.safetensors, "
                                   "tokenizer.json) saved by save_pretrained: texts in, labels or embeddings out.")  # fmt: skip
    p.add_argument("program", metavar="PROGRAM.pt2|DIR", help="an ExportedProgram saved by torch.export.save, or a Hugging Face model directory")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write (replaced atomically)")
    p.add_argument("--calibration", metavar="SAMPLES.npz",
                   help="numpy .npz with one array per input name, batch dimension first (at least 16 samples); "
                        "required for a program")
    p.add_argument("--labels", type=_names, default=None, metavar="A,B,...", help="class labels, one per column of the one output")
    p.add_argument("--input-names", type=_names, default=None, metavar="X,Y", help="input names (default: the program's own)")
    p.add_argument("--output-names", type=_names, default=None, metavar="Y,Z", help="output names (default: output, output_0, ...)")
    add_quant_options(p)
    p.add_argument("--json", action="store_true", help="print the model card as JSON")
    p.set_defaults(run=run)


def run(a) -> int:
    """Import the program, write the run directory and print its summary; returns the exit code."""
    import os

    if os.path.isdir(a.program):
        return _run_text(a)
    if a.calibration is None:
        raise UsageError("--calibration: required to import a program (SAMPLES.npz)")
    import numpy as np

    from ..importer import gate_task, import_model, load_program_file
    from ..quantize import QuantConfig

    quant = QuantConfig(a.scheme, a.min_weights, force=a.force).with_gate(gate_task(a.labels), a.gate).validate()
    ep = load_program_file(a.program)
    try:
        with np.load(a.calibration, allow_pickle=False) as npz:
            calibration = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise UsageError(f"{a.calibration}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UsageError(f"{a.calibration}: not a numpy .npz of plain arrays ({str(e).splitlines()[0][:200]})") from None
    names = a.input_names or list(ep.graph_signature.user_inputs)
    example = tuple(np.asarray(calibration[n][:2]) if n in calibration else None for n in names)
    if any(e is None for e in example):
        raise UsageError(f"{a.calibration}: missing input(s) {[n for n, e in zip(names, example) if e is None]}; it holds {list(calibration)[:20]}")
    import torch

    exported = import_model(ep, tuple(torch.from_numpy(np.ascontiguousarray(e)) for e in example), a.out,
                            input_names=names, output_names=a.output_names, calibration=calibration, quant=quant,
                            labels=a.labels, compile=a.compile)  # fmt: skip
    if a.json:
        print_json(exported.card)
        return 0
    card = exported.card
    ins = ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in card["input"]["tensors"])
    outs = ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in card["output"]["tensors"])
    print(f"imported {card['model']['source']} ({card['model']['parameters']:,} parameters): inputs {ins} → outputs {outs}")
    print(f"  not quantized: {card['quantization'].get('not_quantized', '')}" if "not_quantized" in card["quantization"] else exported.report.summary())
    print(exported.optimization_summary())
    print(f"run directory: {exported.run_dir}" + (f" (compiled in {exported.compile_seconds:.1f} s)" if exported.compile_seconds else ""))
    return 0


def _run_text(a) -> int:
    """Import a Hugging Face text model directory and print its summary; returns the exit code."""
    from ..textimport import import_text

    if a.scheme in ("int8", "pow2", "int8-weight") or a.calibration:
        raise UsageError(f"{a.program}: a text model is imported in float (int8 candidates for text models are not "
                         f"measured yet); drop --quantize {a.scheme} and --calibration" if a.scheme in ("int8", "pow2", "int8-weight")
                         else f"{a.program}: --calibration SAMPLES.npz is for programs; a text model takes no calibration arrays")  # fmt: skip
    exported = import_text(a.program, a.out)
    card = exported.card
    if a.json:
        print_json(card)
        return 0
    out = card["output"]
    what = f"labels {', '.join(out['classes'])}" if out["classes"] else f"{out['dim']}-dim embeddings ({out['kind']})"
    print(f"imported {card['model']['architecture'] or card['model']['model_type']} ({card['model']['parameters']:,} parameters, "
          f"at most {card['input']['max_length']} tokens): texts → {what}")  # fmt: skip
    print(f"  {card['quantization']['not_quantized']}")
    print(f"run directory: {exported.run_dir}")
    return 0
