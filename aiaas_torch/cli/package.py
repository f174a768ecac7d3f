"""`aiaas package` and `aiaas export-kserve`: build a TorchServe archive from a run directory, lay one out for KServe."""

from __future__ import annotations

import os

from .common import Default, UsageError, print_json, show

PACKAGE, SERVING = "aiaas_torch.archive:package", "aiaas_torch.archive:ServingConfig"


def add_parser(sub) -> None:
    """Add the package and export-kserve sub-parsers to `sub`; returns None."""
    k = sub.add_parser("package", help="build NAME-VERSION.mar for TorchServe from a run directory",
                       description="Build MODEL_STORE/NAME-VERSION.mar (handler, model files, card, model-config.yaml), "
                                   "byte-identical for the same run directory, verified against the card after writing.")
    k.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `aiaas train` or `aiaas import`")
    k.add_argument("--name", required=True, metavar="NAME",
                   help="the model name clients call (letters, digits, '_'; starts with a letter or digit)")
    k.add_argument("--version", default=Default(PACKAGE, "version"), metavar="V",
                   help="model version: letters, digits, '.' and '_' (default %(default)s)")
    k.add_argument("--model-store", default=Default(PACKAGE, "model_store"), metavar="DIR",
                   help="where the archive goes (default %(default)s)")
    k.add_argument("--device", choices=["auto", "cpu", "gpu"], default=Default(PACKAGE, "device"),
                   help="auto: TorchServe gives a worker a GPU exactly when the host has one; cpu or gpu: forced "
                        "(default %(default)s)")
    k.add_argument("--profile", choices=["throughput", "latency"], default="throughput",
                   help="serving defaults: throughput (batching) or latency (batch 1) (default %(default)s)")
    show(k.add_argument("--workers", type=int, default=None, metavar="N",
                        help="TorchServe workers for the model (default %(workers)s)"), workers=Default(SERVING, "workers"))
    show(k.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="TorchServe batchSize (default %(throughput)s; 1 with --profile latency)"),
         throughput=Default(SERVING, "batch_size"))
    show(k.add_argument("--max-batch-delay", type=int, default=None, metavar="MS",
                        help="TorchServe maxBatchDelay in ms (default %(throughput)s; 0 with --profile latency)"),
         throughput=Default(SERVING, "max_batch_delay_ms"))
    show(k.add_argument("--response-timeout", type=int, default=None, metavar="S",
                        help="TorchServe responseTimeout: seconds a batch may take before its worker is killed and its "
                             "requests answered 500 (default %(seconds)s)"), seconds=Default(SERVING, "response_timeout_s"))
    k.add_argument("--max-rows", type=int, default=None, metavar="N", help="most rows per request (default: the card's)")
    k.add_argument("--sign", action="store_true",
                   help="sign the card with HMAC-SHA256 using $AIAAS_SIGNING_KEY (a key kept outside the archive)")
    k.add_argument("--json", action="store_true", help="print the archive's path, name, version and SHA-256 as JSON")
    k.set_defaults(run=run)

    ks = sub.add_parser("export-kserve", help="lay out a .mar for KServe's TorchServe runtime",
                        description="Write OUT/config/config.properties, OUT/model-store/NAME-V.mar and OUT/inferenceservice.yaml "
                                    "for KServe (inference on 8085, token auth off inside the pod: see deploy/kserve/README.md).")
    ks.add_argument("mar", metavar="MAR", help="archive built by `aiaas package`")
    ks.add_argument("--out", required=True, metavar="DIR", help="directory to write (must be new or empty)")
    ks.add_argument("--storage-uri", default=None, metavar="URI", help="where the tree will be uploaded (default pvc://aiaas-models/NAME)")
    ks.add_argument("--image", default=Default("aiaas_torch.kserve:export_kserve", "image"), metavar="IMAGE",
                    help="serving image built from deploy/Dockerfile (default %(default)s)")
    ks.add_argument("--service", default=None, metavar="NAME", help="InferenceService name (default: the model name)")
    ks.add_argument("--json", action="store_true", help="print the written paths as JSON")
    ks.set_defaults(run=run)


def run(a) -> int:
    """Run `aiaas package` or `aiaas export-kserve`; returns the exit code."""
    return _package(a) if a.command == "package" else _export_kserve(a)


def _package(a) -> int:
    """Build the .mar; returns the exit code."""
    from ..archive import SIGNING_KEY_ENV, ServingConfig, package

    serving = ServingConfig.profile(a.profile)
    for field, value in (("workers", a.workers), ("batch_size", a.batch_size), ("max_batch_delay_ms", a.max_batch_delay),
                         ("response_timeout_s", a.response_timeout), ("max_rows", a.max_rows)):
        if value is not None:
            setattr(serving, field, value)
    key = None
    if a.sign:
        key = os.environ.get(SIGNING_KEY_ENV)
        if not key:
            raise UsageError(f"--sign needs the signing key in ${SIGNING_KEY_ENV}")
    r = package(a.run_dir, a.name, a.version, a.model_store, a.device, serving.validate(), sign_key=key)
    if a.json:
        print_json({"path": str(r.path), "name": r.name, "version": r.version, "sha256": r.sha256, "files": r.files})
    else:
        print(f"packaged {r.path} (sha256 {r.sha256[:16]}…, {len(r.files)} files, verified against the card)")
    return 0


def _export_kserve(a) -> int:
    """Lay out the KServe tree; returns the exit code."""
    from ..kserve import export_kserve

    tree = export_kserve(a.mar, a.out, a.storage_uri, a.image, a.service)
    doc = {"root": str(tree.root), "config": str(tree.config), "manifest": str(tree.manifest),
           "model_name": tree.model_name, "model_version": tree.model_version}
    if a.json:
        print_json(doc)
    else:
        print(f"KServe tree for {tree.model_name} v{tree.model_version} in {tree.root}: upload it to the storageUri in {tree.manifest.name}")
    return 0
