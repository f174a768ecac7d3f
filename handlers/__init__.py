"""The code that runs inside a TorchServe worker; every file here is shipped in every archive.

The worker's dependency set, decided once (issue 24, item 8) and declared in pyproject.toml's dependencies:
torch and the standard library; numpy and orjson (faster paths, with a fallback when absent); and, for text and
generation models, ``tokenizers`` (the tokenizer read from the archive's ``tokenizer.json``), ``safetensors``
(weights read without pickle) and ``jinja2`` (chat templates, rendered only in its sandboxed environment).
Nothing else: no ``transformers`` (a Hugging Face model is exported once, at ``aiaas import``), no ``torchao``
(a quantized program carries its own ops), and nothing from ``aiaas_torch`` (the library may import these files,
never the reverse; tests/test_architecture.py checks both rules).
"""
