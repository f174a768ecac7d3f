"""An instance's TorchServe config: the base file, the forced settings, the effective config, log4j, the environment.

BASE_CONFIG (config.properties beside this module: a link to the repository's top-level config.properties, whose
content wheels ship as package data) is the one base config a human edits;
`start` uses it unless given a config file or run where a ./config.properties exists.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Mapping

from ..archive import SIGNING_KEY_ENV
from .home import WORKFLOW_STORE
from .errors import SecuritySettingWarning, ServerArgumentError, TorchServeError
from .ports import Ports

BASE_CONFIG = Path(__file__).resolve().with_name("config.properties")

# TorchServe matches each allowed_urls regex against a registration's whole URL; an empty negative lookahead matches
# no URL. Its workflow API (POST /workflows) ignores enable_model_api and checks URLs against allowed_urls only.
NO_URL = "(?!)"
# The security settings every instance runs with, whatever the base config says (a change gets a warning).
SECURITY_SETTINGS = {
    "disable_token_authorization": "false",  # token auth on
    "enable_model_api": "false",  # no registering or unregistering models over HTTP
    "allowed_urls": NO_URL,  # no registration by URL at all (models: model API off; workflows: see workflow_store)
    "install_py_dep_per_model": "false",  # no pip installs of a model's requirements at load time
    "enable_envvars_config": "false",  # TS_* environment variables cannot override this config
    "use_env_allowed_urls": "false",  # nor can TS_ALLOWED_URLS
}
# Wire settings every instance runs with, forced and warned about the same way. decode_input_request=false: the
# frontend sets each worker's TS_DECODE_INPUT_REQUEST from this key (default true, when the worker runs json.loads
# on every JSON body before the handler parses it again, with its own NaN semantics): one JSON parse per body.
WIRE_SETTINGS = {"decode_input_request": "false"}
# What `start_server(allow_deploy=True)` changes (model_control_settings): the model API on, so that `deploy` can register
# archives it checked into HOME/store, and `allowed_urls` narrowed from "any local file" to that store.
_REGEX_SPECIALS = set(".+*?(){}|$")  # literal inside [...]; the others are refused

# Settings that put code or flags into the Java frontend (plugin jars on its classpath, JVM flags) or make it run a
# command: dropped from a base config unless the caller trusts them by name (`--trust-config-key`).
TRUSTABLE_KEYS = ("plugins_path", "vmargs", "system_metrics_cmd")
# Environment variables TorchServe reads even with enable_envvars_config=false, and the JVM's own flag variables.
_UNTRUSTED_ENV = ("TS_CONFIG_FILE", "TS_OPEN_INFERENCE_PROTOCOL", "TS_MODEL_SERVER_HOME",
                  "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS")  # fmt: skip

# Quiet log4j2 config: TorchServe's bundled one logs org.pytorch.serve at DEBUG (~30 lines per request).
_LOG4J2_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by aiaas_torch.serving: INFO logs, access log {access_state}, console gets warnings only. -->
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/>
    </Console>
{appenders}
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="{access_level}" additivity="false"><AppenderRef ref="access_log"/></Logger>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="MODEL_LOG" level="info" additivity="false">
      <!-- The worker prints this once per batch (thousands of lines a second under load). -->
      <RegexFilter regex="Backend received inference at.*" onMatch="DENY" onMismatch="NEUTRAL"/>
      <AppenderRef ref="model_log"/>
    </Logger>
    <Logger name="MODEL_METRICS" level="info" additivity="false"><AppenderRef ref="model_metrics"/></Logger>
    <Logger name="TS_METRICS" level="info" additivity="false"><AppenderRef ref="ts_metrics"/></Logger>
    <!-- Per-request INFO chatter ("Sending response for jobId", worker metric echo lines). -->
    <Logger name="org.pytorch.serve.wlm.BatchAggregator" level="warn"/>
    <Logger name="org.pytorch.serve.wlm.WorkerLifeCycle" level="warn"/>
    <Logger name="org.pytorch.serve.wlm.WorkerThread" level="warn"/><!-- "Backend response time", per batch -->
    <Logger name="org.pytorch.serve" level="info" additivity="false">
      <AppenderRef ref="ts_log"/>
      <AppenderRef ref="STDOUT" level="warn"/>
    </Logger>
    <Root level="warn">
      <AppenderRef ref="STDOUT"/>
      <AppenderRef ref="ts_log"/>
    </Root>
  </Loggers>
</Configuration>
"""
_ROLLING_FILE = """\
    <RollingFile name="{name}" fileName="${{env:LOG_LOCATION:-logs}}/{name}.log"
                 filePattern="${{env:LOG_LOCATION:-logs}}/{name}.%d{{dd-MMM}}.log.gz">
      <PatternLayout pattern="{pattern}"/>
      <Policies><SizeBasedTriggeringPolicy size="100 MB"/><TimeBasedTriggeringPolicy/></Policies>
      <DefaultRolloverStrategy max="5"/>
    </RollingFile>"""


def parse_properties(text: str) -> dict[str, str]:
    """Return key → value of a Java properties text (``key=value`` or ``key: value``; # and ! comments)."""
    props: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if cut < 0:
            key, value = line, ""
        else:
            key, value = line[:cut].strip(), line[cut + 1 :].strip()
        props[key] = value
    return props


def base_config(config: str | os.PathLike | None) -> tuple[dict[str, str], str]:
    """Return the base properties and the file they came from (config, else ./config.properties, else BASE_CONFIG)."""
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ServerArgumentError(f"config file not found: {path}")
        return parse_properties(path.read_text()), str(path.resolve())
    local = Path("config.properties")
    if local.is_file():
        return parse_properties(local.read_text()), str(local.resolve())
    if not BASE_CONFIG.is_file():
        raise TorchServeError(f"base config missing from the installed package: {BASE_CONFIG}")
    return parse_properties(BASE_CONFIG.read_text()), str(BASE_CONFIG)


def _metrics_config() -> Path:
    """Return the absolute path of the packaged metrics.yaml (aiaas_torch.handlers)."""
    import aiaas_torch.handlers as handlers

    path = Path(handlers.__file__).resolve().parent / "metrics.yaml"
    if not path.is_file():
        raise TorchServeError(f"metrics config missing from the installed package: {path}")
    return path


def model_control_settings(model_store: Path) -> dict[str, str]:
    """Return the settings that let `deploy` register archives: model API on, URLs allowed only inside the store.

    TorchServe 0.12 (ArchiveUtils.validateURL) matches each `allowed_urls` regex, case-insensitively, with the list
    split at commas, against the whole URL of a registration, then copies the URL's target (percent-decoded) into
    the store and loads the copy; a plain file name is looked up in the store without that check. So the fence is
    case-sensitive (`(?-i)`) and admits plain archive names directly inside the store only: no `%` (an encoded
    `../` would leave it), no separator, nothing after `.mar`. The store's path goes into the regex with every
    special character inside a class (no backslashes: Java's properties reader would eat them); a path holding a
    comma, a backslash or `[`/`]`/`^` cannot be fenced this way.
    """
    text = str(model_store)
    if any(c in text for c in ",\\[]^") or not text.isprintable():
        raise ServerArgumentError(f"home {model_store.parent}: deploys need a path without ',', '\\', '[', ']', '^'")
    quoted = "".join(f"[{c}]" if c in _REGEX_SPECIALS else c for c in text)
    return {"enable_model_api": "true", "allowed_urls": f"(?-i)file://{quoted}/[A-Za-z0-9_][A-Za-z0-9_.-]*[.]mar"}


def effective_config(
    base: Mapping[str, str], ports: Ports, model_store: Path, trusted_keys: Iterable[str] = (), allow_deploy: bool = False
) -> dict[str, str]:
    """Return the base properties with this instance's addresses, paths, the security and the wire settings forced.

    Warns (SecuritySettingWarning) for every forced setting the base config sets otherwise and for every dropped
    key that `trusted_keys` does not name. allow_deploy: the model API on for this store only (model_control_settings).
    """
    props = dict(base)
    addresses = {
        "inference_address": f"http://127.0.0.1:{ports.inference}",
        "management_address": f"http://127.0.0.1:{ports.management}",
        "metrics_address": f"http://127.0.0.1:{ports.metrics}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_management_address": "127.0.0.1",
    }
    for key, value in {**addresses, **SECURITY_SETTINGS, **WIRE_SETTINGS}.items():
        given = props.get(key)
        if given is not None and not _same_setting(key, given, value):
            warnings.warn(f"config sets {key}={given}; aiaas serve forces {key}={value}", SecuritySettingWarning, 3)
    props.update(addresses)
    props.update(SECURITY_SETTINGS)
    props.update(WIRE_SETTINGS)
    if allow_deploy:
        props.update(model_control_settings(model_store))
    props.update(
        {
            "grpc_inference_port": str(ports.grpc_inference),
            "grpc_management_port": str(ports.grpc_management),
            "initial_worker_port": str(ports.initial_worker),
            "metrics_config": str(_metrics_config()),
            "model_store": str(model_store),
            # Workflows are registered from here (TorchServe's default: the model store) with no model API check: an
            # empty folder of the home's, and NO_URL or the store's fence for URLs, leave nothing to register.
            "workflow_store": str(model_store.with_name(WORKFLOW_STORE)),
            "metrics_mode": "prometheus",
        }
    )
    # Workers run code from the archives: the signing key must never reach them, even where a caller's environment
    # holds it (TorchServe gives each worker its own environment minus the names this pattern matches whole).
    hidden, key_env = base.get("blacklist_env_vars", ""), SIGNING_KEY_ENV
    props["blacklist_env_vars"] = f"(?:{hidden})|{key_env}" if hidden else key_env
    # These would be passed to the launcher/JVM: our log config and our own store/model list win.
    for key in ("load_models", "model_snapshot"):
        props.pop(key, None)
    trusted = set(trusted_keys)
    for key in TRUSTABLE_KEYS:
        if key in props and key not in trusted:
            warnings.warn(
                f"config sets {key}={props.pop(key)}; ignored (it changes the Java frontend's code, flags or commands): "
                f"pass --trust-config-key {key} to keep it",
                SecuritySettingWarning, 3,
            )  # fmt: skip
    return props


def _same_setting(key: str, given: str, forced: str) -> bool:
    """Return True when a config value means the forced one (booleans case-insensitively, addresses by host)."""
    if forced in ("true", "false"):
        return given.strip().lower() == forced
    if key.endswith("_address") and forced.startswith("http://"):
        return given.strip().startswith("http://127.0.0.1:")
    return given.strip() == forced


def launcher_env(logs: Path, tmp: Path) -> dict[str, str]:
    """Return the environment for the torchserve launcher: ours, minus the signing key and what would override the
    forced settings, plus the instance's paths."""
    env = dict(os.environ)
    env.pop(SIGNING_KEY_ENV, None)  # archives were checked already; nothing TorchServe runs may see the key
    for name in _UNTRUSTED_ENV:
        if env.pop(name, None) is not None and name != "TS_CONFIG_FILE":
            warnings.warn(f"${name} is set; not passed to TorchServe (aiaas serve forces its settings)", SecuritySettingWarning, 3)
    env.update(
        {
            "LOG_LOCATION": str(logs),
            "METRICS_LOCATION": str(logs),
            "TMPDIR": str(tmp),  # the launcher's pid file: one instance per TMPDIR
            "TEMP": str(tmp),  # Java's tmpdir: worker sockets and unpacked archives
        }
    )
    return env


# What the gateway's Python needs of the caller's environment; everything else (the signing key, cloud and API
# credentials, TorchServe's overrides) stays behind.
_GATEWAY_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "VIRTUAL_ENV")
_GATEWAY_ENV_PREFIXES = ("LC_", "PYTHON")


def gateway_env() -> dict[str, str]:
    """Return the environment for the Open Inference gateway: the allow-listed names of ours (never the signing
    key or another secret), unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k in _GATEWAY_ENV or k.startswith(_GATEWAY_ENV_PREFIXES)}
    env.pop(SIGNING_KEY_ENV, None)  # not allow-listed; said twice so that a wider list cannot let it through
    env["PYTHONUNBUFFERED"] = "1"
    return env


def log4j_config(access_log: bool) -> str:
    """Return the quiet log4j2 XML (access log at INFO only when asked)."""
    plain, full = "%d{ISO8601} - %m%n", "%d{ISO8601} [%-5p] %t %c - %m%n"
    appenders = "\n".join(
        _ROLLING_FILE.format(name=name, pattern=pattern).replace(
            "env:LOG_LOCATION", "env:METRICS_LOCATION" if name.endswith("metrics") else "env:LOG_LOCATION"
        )
        for name, pattern in [
            ("access_log", plain),
            ("model_log", full),
            ("model_metrics", plain),
            ("ts_log", full),
            ("ts_metrics", plain),
        ]
    )
    return _LOG4J2_XML.format(
        appenders=appenders,
        access_level="info" if access_log else "off",
        access_state="on" if access_log else "off",
    )
