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

    p = sub.add_parser("import", help="import a torch.export program (.pt2) or a Hugging Face text or causal-LM directory into a run directory",
                       description="Import PROGRAM.pt2 (written by torch.export.save, batch dimension dynamic) into a run "
                                   "directory as `aiaas train` writes one: the card records the tensor contract and the "
                                   "value ranges of the calibration samples; the program is compiled where that pays. "
                                   "Or import DIR, a Hugging Face text classifier or encoder (config.json, *.safetensors, "
                                   "tokenizer.json) saved by save_pretrained: texts in, labels or embeddings out. "
                                   "Or import DIR, a Hugging Face causal language model (Llama, Mistral, Qwen2, Gemma, "
                                   "GPT-2: config.json, *.safetensors, tokenizer.json, chat template) for generation; with --quantize "
                                   "int8-weight the worker serves int8 weights, imported only when their greedy tokens "
                                   "agree with float's on at least --gate F of the positions (default 0.95; --force "
                                   "imports one that fails).")  # fmt: skip
    p.add_argument("program", metavar="PROGRAM.pt2|DIR", help="an ExportedProgram saved by torch.export.save, or a Hugging Face model directory")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write (replaced atomically)")
    p.add_argument("--calibration", metavar="SAMPLES.npz|PROMPTS.txt",
                   help="a program: numpy .npz with one array per input name, batch dimension first (at least 16 "
                        "samples), required. A causal LM with --quantize int8-weight: a UTF-8 text file, one prompt per "
                        "line (empty lines skipped, at most 1,000 lines and 1 MiB; each prompt truncated to fit the "
                        "context minus the 128 generated tokens, or half the context when it holds fewer) for the "
                        "generation gate; default: its built-in prompts")
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
        return _run_directory(a)
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


def _refuse_program_options(a, what: str) -> None:
    """Raise UsageError when options only a program takes (quantization, calibration) are given for `what`."""
    if a.scheme in ("int8", "pow2", "int8-weight"):
        raise UsageError(f"{a.program}: {what} is imported in float (int8 candidates for it are not measured yet); "
                         f"drop --quantize {a.scheme}")
    if a.calibration:
        raise UsageError(f"{a.program}: --calibration SAMPLES.npz is for programs; {what} takes no calibration arrays")


def _generation_quant(a) -> dict:
    """Return import_generation's quantization arguments from the options, refusing schemes a causal LM does not take."""
    if a.scheme in ("int8", "pow2"):
        raise UsageError(f"{a.program}: --quantize {a.scheme} is for programs; a causal language model takes "
                         f"--quantize int8-weight (int8 weights, gated against float) or none")
    if a.scheme != "int8-weight":  # none, or auto (the float decoder: int8-weight is not measured per host yet)
        if a.calibration or a.gate is not None or a.force:
            raise UsageError(f"{a.program}: --calibration, --gate and --force go with --quantize int8-weight for a "
                             f"causal language model")
        return {}
    return {"quantize": "int8-weight", "calibration": a.calibration, "gate": a.gate, "force": a.force}


def _run_directory(a) -> int:
    """Import a Hugging Face directory (a causal LM for generation, else a text model) and print its summary; returns
    the exit code."""
    from ..genimport import import_generation, is_causal_lm_directory
    from ..textimport import import_text

    generation = is_causal_lm_directory(a.program)
    if generation:
        done = import_generation(a.program, a.out, **_generation_quant(a))
    else:
        _refuse_program_options(a, "a text model")
        done = import_text(a.program, a.out)
    if a.json:
        print_json(done.card)
        return 0
    print(_generation_summary(done.card) if generation else _text_summary(done.card))
    print(f"run directory: {done.run_dir}")
    if generation:
        print(f"next: aiaas package {done.run_dir} --name NAME --version 1.0 --sign && aiaas serve start")
    return 0


def _generation_summary(card: dict) -> str:
    """Return what a newcomer needs to know of an imported causal LM: architecture, size, context, template, gate."""
    m, gate = card["model"], card["metrics"]["greedy_agreement"]
    template = "yes (chat_template.jinja, sandboxed)" if card["input"]["chat_template"] else "none (only /v1/completions prompts)"
    agreed = f"our decoder's greedy tokens equal transformers' on {gate.get('prompts')} prompts"
    return (f"imported {m['architecture'] or m['model_type']} ({m['parameters']:,} parameters, {m['layers']} layers, "
            f"context {card['input']['context']} tokens, float32)\n  chat template: {template}\n"
            f"  greedy gate: {gate.get('skipped', agreed)}" + _int8_summary(card["quantization"]))


def _int8_summary(quant: dict) -> str:
    """Return the lines naming an int8-weight import's gate figures and weight bytes ('' for a float import)."""
    if quant.get("scheme") != "int8-weight":
        return ""
    g, b = quant["gate"], quant["weight_bytes"]
    forced = " (FAILED, imported with --force)" if g["forced"] else ""
    return (f"\n  int8-weight: greedy-token agreement {g['agreement']:.4f} over {g['prompts']} prompts × "
            f"{g['new_tokens']} tokens (needs ≥ {g['min_agreement']}){forced}, "
            f"held-out log-likelihood change {g['loglik_change']:+.4f} nats/token, prompts {g['prompts_source']}; "
            f"weights {b['ratio']:.2f}x float's bytes")


def _text_summary(card: dict) -> str:
    """Return the summary of an imported text model: architecture, size, maximum length, what it answers."""
    out = card["output"]
    what = f"labels {', '.join(out['classes'])}" if out["classes"] else f"{out['dim']}-dim embeddings ({out['kind']})"
    return (f"imported {card['model']['architecture'] or card['model']['model_type']} ({card['model']['parameters']:,} "
            f"parameters, at most {card['input']['max_length']} tokens): texts → {what}\n"
            f"  {card['quantization']['not_quantized']}")
