"""The configuration: the shipped example, every kind of error report, the settings."""

from __future__ import annotations

import os
import shutil
from datetime import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from config import (
    CONFIG_FILES,
    DEFAULT_CONFIG_DIR,
    ConfigError,
    ConfigProblem,
    PipelineKind,
    Settings,
    SourceMode,
    StageOutcome,
    check_config,
    get_settings,
    load_config,
    missing_secrets,
    resolve_secret,
)

ORDER_STAGES = [
    "estimate",
    "approval",
    "awaiting_payment",
    "design",
    "production_task",
    "production",
    "order_ready",
    "shipping",
    "installation",
    "won",
]


# --- helpers -------------------------------------------------------------------------


@pytest.fixture
def cfg_dir(tmp_path: Path) -> Path:
    """A copy of the shipped example to break."""
    target = tmp_path / "config"
    target.mkdir()
    for name in CONFIG_FILES:
        shutil.copy(DEFAULT_CONFIG_DIR / name, target / name)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path.name}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def line_of(path: Path, needle: str, nth: int = 0) -> int:
    """1-based line of the ``nth`` line containing ``needle``."""
    text = path.read_text(encoding="utf-8")
    lines = [i for i, line in enumerate(text.splitlines(keepends=True), 1) if needle in line]
    return lines[nth]


def only_problem(config_dir: Path) -> ConfigProblem:
    with pytest.raises(ConfigError) as info:
        load_config(config_dir)
    problems = info.value.problems
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


# --- the shipped example -------------------------------------------------------------


def test_example_loads() -> None:
    cfg = load_config(DEFAULT_CONFIG_DIR)
    orders = cfg.pipeline("orders")
    assert orders.kind is PipelineKind.DEAL
    # The technologist may return an order to «Расчет проекта»; from shipping on, never back.
    assert not orders.forbid_backward
    assert orders.stage("shipping").no_return  # type: ignore[union-attr]
    assert [s.id for s in orders.stages if s.id != "lost"] == ORDER_STAGES
    assert orders.stage("won") is not None
    assert orders.stage("won").outcome is StageOutcome.WON  # type: ignore[union-attr]
    assert orders.stage("lost").outcome is StageOutcome.FAILED  # type: ignore[union-attr]
    assert orders.first_stage.id == "estimate"


def test_example_required_fields() -> None:
    orders = load_config(DEFAULT_CONFIG_DIR).pipeline("orders")
    required = {s.id: s.required_fields for s in orders.stages if s.required_fields}
    assert required == {
        "approval": ["estimate_amount"],
        "awaiting_payment": ["contract_number", "amount"],
        "design": ["prepayment_amount", "delivery_deadline", "order_number"],
        "production_task": ["design_file"],
        "shipping": ["shipping_date", "delivery_address"],
        "installation": ["installation_date"],
    }


def test_example_pipelines_sources_users() -> None:
    cfg = load_config()
    leads = cfg.pipeline("leads")
    assert leads.kind is PipelineKind.LEAD
    failed = [s.id for s in leads.stages if s.outcome is StageOutcome.FAILED]
    assert failed == ["not_our_product", "competitor", "not_interested", "spam"]
    assert [s.id for s in leads.stages if s.spam] == ["spam"]
    assert cfg.pipeline("wholesale").kind is PipelineKind.LEAD
    assert cfg.pipeline("direct").kind is PipelineKind.DEAL

    assert {s.id for s in cfg.sources.sources} == {
        "site",
        "mail_sales",
        "mail_wholesale",
        "phone",
        "shop",
        "messengers",
        "avito",
    }
    shop = cfg.source("shop")
    assert shop.mode is SourceMode.NO_LEADS
    assert shop.responsible is not None
    assert cfg.source("mail_wholesale").pipeline == "wholesale"
    assert [u.id for u in cfg.line_users("wholesale")] == ["olga.ivanova"]
    assert len(cfg.line_users("sales")) == 3

    mailbox = cfg.account("email", "sales")
    assert mailbox is not None
    assert mailbox.source == "mail_sales"
    assert mailbox.secret_env == "OMNIROUTE_SECRET_MAIL_SALES"
    assert mailbox.settings == {
        "host": "imap.example.com",
        "port": 993,
        "tls": True,
        "user": "sales@example.com",
        "folder": "INBOX",
        "display_name": "Mebel-Lux sales",
        "smtp_host": "smtp.example.com",
        "smtp_port": 587,
        "smtp_security": "starttls",
        "sent_folder": "Sent",
    }
    assert cfg.calendar.timezone == "Europe/Moscow"
    assert cfg.calendar.working_hours.start == time(9, 0)
    assert cfg.calendar.working_hours.end == time(18, 0)


def test_example_checks_clean() -> None:
    assert check_config(DEFAULT_CONFIG_DIR) == []


def test_optional_files_may_be_absent(cfg_dir: Path) -> None:
    (cfg_dir / "channels.yaml").unlink()
    (cfg_dir / "calendar.yaml").unlink()
    cfg = load_config(cfg_dir)
    assert cfg.channels.accounts == []
    assert cfg.calendar.timezone == "Europe/Moscow"


def test_required_file_missing(cfg_dir: Path) -> None:
    (cfg_dir / "users.yaml").unlink()
    problem = only_problem(cfg_dir)
    assert (problem.file, problem.line, problem.key) == ("users.yaml", None, "")
    assert "not found" in problem.message


def test_unquoted_times_are_times(cfg_dir: Path) -> None:
    # Plain YAML 1.1 would read 18:00 as the base-60 integer 1080.
    edit(
        cfg_dir / "calendar.yaml",
        '  start: "09:00"\n  end: "18:00"',
        "  start: 08:30\n  end: 18:00",
    )
    hours = load_config(cfg_dir).calendar.working_hours
    assert (hours.start, hours.end) == (time(8, 30), time(18, 0))


# --- error reports -------------------------------------------------------------------


def test_yaml_syntax_error(cfg_dir: Path) -> None:
    path = cfg_dir / "pipelines.yaml"
    edit(path, "    name: Сделки\n", "    name: Сделки: the big ones\n")
    problem = only_problem(cfg_dir)
    assert problem.file == "pipelines.yaml"
    assert problem.line == line_of(path, "name: Сделки:")
    assert problem.column == len("    name: Сделки:")
    assert problem.message.startswith("YAML syntax error: mapping values are not allowed")


def test_unknown_key(cfg_dir: Path) -> None:
    path = cfg_dir / "pipelines.yaml"
    edit(path, "    name: Сделки\n", "    name: Сделки\n    colour: red\n")
    problem = only_problem(cfg_dir)
    assert (problem.file, problem.line, problem.column) == (
        "pipelines.yaml",
        line_of(path, "colour: red"),
        5,
    )
    assert problem.key == "pipelines[1].colour"
    assert problem.message == "unknown key 'colour'"


def test_wrong_type(cfg_dir: Path) -> None:
    path = cfg_dir / "pipelines.yaml"
    edit(path, "no_return: true", "no_return: sometimes")
    problem = only_problem(cfg_dir)
    assert (problem.file, problem.line) == ("pipelines.yaml", line_of(path, "sometimes"))
    assert problem.key == "pipelines[1].stages[7].no_return"
    assert "boolean" in problem.message
    assert "'sometimes'" in problem.message


def test_wrong_type_deep_in_a_list(cfg_dir: Path) -> None:
    path = cfg_dir / "pipelines.yaml"
    edit(path, "[contract_number, amount]", "[contract_number, Amount]")
    problem = only_problem(cfg_dir)
    line = line_of(path, "Amount")
    assert (problem.file, problem.line) == ("pipelines.yaml", line)
    assert problem.column == path.read_text().splitlines()[line - 1].index("Amount") + 1
    assert problem.key == "pipelines[1].stages[2].required_fields[1]"
    assert "identifier" in problem.message


def test_missing_required_key(cfg_dir: Path) -> None:
    path = cfg_dir / "users.yaml"
    edit(path, "    name: Olga Ivanova\n", "")
    problem = only_problem(cfg_dir)
    # Points at the mapping that lacks the key: the user entry.
    assert (problem.file, problem.line) == ("users.yaml", line_of(path, "id: olga.ivanova"))
    assert problem.key == "users[3].name"
    assert problem.message == "missing required key 'name'"


def test_source_with_unknown_pipeline(cfg_dir: Path) -> None:
    path = cfg_dir / "sources.yaml"
    edit(path, "    pipeline: wholesale\n", "    pipeline: wholesale_requests\n")
    problem = only_problem(cfg_dir)
    assert (problem.file, problem.line) == ("sources.yaml", line_of(path, "wholesale_requests"))
    assert problem.key == "sources[2].pipeline"
    assert problem.message == "unknown pipeline 'wholesale_requests'"


def test_leads_source_on_deal_pipeline(cfg_dir: Path) -> None:
    path = cfg_dir / "sources.yaml"
    edit(
        path,
        "    name: Phone calls\n    pipeline: leads\n",
        "    name: Phone calls\n    pipeline: orders\n",
    )
    problem = only_problem(cfg_dir)
    assert (problem.file, problem.line) == ("sources.yaml", line_of(path, "pipeline: orders"))
    assert problem.key == "sources[3].pipeline"
    assert "needs a pipeline of kind lead" in problem.message


def test_source_on_final_stage(cfg_dir: Path) -> None:
    path = cfg_dir / "sources.yaml"
    edit(path, "    stage: new_order\n", "    stage: won\n")
    problem = only_problem(cfg_dir)
    assert (problem.file, problem.line) == ("sources.yaml", line_of(path, "stage: won"))
    assert problem.key == "sources[4].stage"
    assert "final" in problem.message


def test_source_line_without_users(cfg_dir: Path) -> None:
    path = cfg_dir / "users.yaml"
    edit(path, "    lines: [wholesale]\n", "    lines: [wholesale]\n    active: false\n")
    problem = only_problem(cfg_dir)
    assert problem.file == "sources.yaml"
    assert problem.line == line_of(cfg_dir / "sources.yaml", "    line: wholesale")
    assert problem.key == "sources[2].line"


def test_duplicate_stage_id(cfg_dir: Path) -> None:
    path = cfg_dir / "pipelines.yaml"
    edit(path, "      - id: not_our_product\n", "      - id: competitor\n")
    problem = only_problem(cfg_dir)
    first, second = line_of(path, "id: competitor\n"), line_of(path, "id: competitor\n", 1)
    assert (problem.file, problem.line) == ("pipelines.yaml", second)
    assert problem.key == "pipelines[0].stages[4].id"
    assert problem.message == (
        f"duplicate stage id 'competitor' in pipeline 'leads' (first on line {first})"
    )


def test_department_cycle(cfg_dir: Path) -> None:
    path = cfg_dir / "users.yaml"
    edit(path, "    name: Mebel-Lux\n", "    name: Mebel-Lux\n    parent: wholesale\n")
    problem = only_problem(cfg_dir)
    assert (problem.file, problem.line) == ("users.yaml", line_of(path, "parent: wholesale"))
    assert problem.key == "departments[0].parent"
    assert problem.message == "department parent cycle: company -> wholesale -> sales -> company"


def test_unknown_user_department(cfg_dir: Path) -> None:
    path = cfg_dir / "users.yaml"
    edit(path, "    department: wholesale\n", "    department: opt\n")
    problem = only_problem(cfg_dir)
    assert (problem.file, problem.line) == ("users.yaml", line_of(path, "department: opt"))
    assert problem.key == "users[3].department"
    assert problem.message == "unknown department 'opt'"


def test_literal_password_in_settings(cfg_dir: Path) -> None:
    path = cfg_dir / "channels.yaml"
    edit(
        path,
        "      user: opt@example.com\n",
        "      user: opt@example.com\n      password: hunter2\n      smtp_password_env: SMTP_PW\n",
    )
    problem = only_problem(cfg_dir)
    assert (problem.file, problem.line) == ("channels.yaml", line_of(path, "password: hunter2"))
    assert problem.key == "accounts[3].settings.password"
    assert "literal secret" in problem.message
    assert "hunter2" not in str(problem)


WEBCHAT = "accounts[11].settings"  # the example's webchat account, main-site


def test_webchat_settings_are_checked_key_by_key(cfg_dir: Path) -> None:
    path = cfg_dir / "channels.yaml"
    edit(path, ' http://localhost:8081"', ' localhost:8081/"')
    edit(path, 'colour: "#1f6feb"', "colour: blue")
    edit(path, "      position: right\n", "      position: top\n      theme: dark\n")
    edit(path, '"name:optional phone:optional email:optional"', '"name:optional phone:mandatory"')
    problems = {p.key: p for p in check_config(cfg_dir)}
    keys = ("origins", "colour", "position", "theme", "prechat")
    assert sorted(problems) == sorted(f"{WEBCHAT}.{k}" for k in keys)
    origins = problems[f"{WEBCHAT}.origins"]
    assert origins.line == line_of(path, '      origins: "')
    assert origins.message == "origin 'localhost:8081/' is not scheme://host[:port]"
    prechat = problems[f"{WEBCHAT}.prechat"]
    assert prechat.line == line_of(path, "phone:mandatory")
    assert "'phone:mandatory'" in prechat.message
    colour = problems[f"{WEBCHAT}.colour"]
    assert colour.line == line_of(path, "colour: blue")
    assert colour.message.endswith("got 'blue'")
    assert "'right' or 'left'" in problems[f"{WEBCHAT}.position"].message
    assert problems[f"{WEBCHAT}.theme"].message == "unknown key 'theme'"
    with pytest.raises(ConfigError):
        load_config(cfg_dir)


def test_an_enabled_webchat_account_needs_origins(cfg_dir: Path) -> None:
    path = cfg_dir / "channels.yaml"
    text = path.read_text(encoding="utf-8")
    line = text.splitlines(keepends=True)[line_of(path, '      origins: "') - 1]
    edit(path, line, "")
    problem = only_problem(cfg_dir)
    assert (problem.file, problem.key) == ("channels.yaml", WEBCHAT)
    assert "no 'origins'" in problem.message
    # Switched off, it may wait for its origins.
    edit(path, "    account: main-site\n", "    account: main-site\n    enabled: false\n")
    assert check_config(cfg_dir) == []


def test_secret_env_must_be_a_name(cfg_dir: Path) -> None:
    path = cfg_dir / "channels.yaml"
    edit(path, "secret_env: OMNIROUTE_SECRET_API_SHOP", "secret_env: s3cr3t-value")
    problem = only_problem(cfg_dir)
    assert (problem.file, problem.line) == ("channels.yaml", line_of(path, "s3cr3t-value"))
    assert problem.key == "accounts[1].secret_env"
    assert "s3cr3t" not in problem.message


def test_bad_timezone(cfg_dir: Path) -> None:
    path = cfg_dir / "calendar.yaml"
    edit(path, "timezone: Europe/Moscow", "timezone: Europe/Moskva")
    problem = only_problem(cfg_dir)
    assert (problem.file, problem.line) == ("calendar.yaml", line_of(path, "Europe/Moskva"))
    assert problem.key == "timezone"
    assert "unknown time zone 'Europe/Moskva'" in problem.message


def test_duplicate_yaml_key(cfg_dir: Path) -> None:
    path = cfg_dir / "users.yaml"
    edit(path, "    email: volkov@example.com\n", "    email: volkov@example.com\n    email: x@y\n")
    problem = only_problem(cfg_dir)
    assert (problem.file, problem.line) == ("users.yaml", line_of(path, "email: x@y"))
    assert problem.key == "users[4].email"


def test_all_problems_are_collected(cfg_dir: Path) -> None:
    edit(cfg_dir / "pipelines.yaml", "    name: Сделки\n", "    name: Сделки\n    colour: red\n")
    edit(cfg_dir / "users.yaml", "    department: wholesale\n", "    department: opt\n")
    edit(cfg_dir / "calendar.yaml", "timezone: Europe/Moscow", "timezone: Mars/Olympus")
    edit(cfg_dir / "channels.yaml", "    source: shop\n", "    source: webshop\n")
    problems = check_config(cfg_dir)
    assert [(p.file, p.key) for p in problems] == [
        ("channels.yaml", "accounts[1].source"),
        ("pipelines.yaml", "pipelines[1].colour"),
        ("users.yaml", "users[3].department"),
        ("calendar.yaml", "timezone"),
    ]
    with pytest.raises(ConfigError) as info:
        load_config(cfg_dir)
    assert info.value.problems == problems
    assert str(info.value).startswith("4 configuration problems:\n")


def test_problem_str() -> None:
    problem = ConfigProblem("sources.yaml", 12, 15, "sources[2].pipeline", "unknown pipeline 'x'")
    assert str(problem) == "sources.yaml:12:15: sources[2].pipeline: unknown pipeline 'x'"
    assert str(ConfigProblem("users.yaml", None, None, "", "file not found")) == (
        "users.yaml: file not found"
    )


# --- secrets -------------------------------------------------------------------------


def test_resolve_and_missing_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config()
    for name in list(os.environ):
        if name.startswith("OMNIROUTE_SECRET_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OMNIROUTE_SECRET_API_SITE", "k3y")
    site = cfg.account("api", "site")
    assert site is not None
    assert resolve_secret(site) == "k3y"
    shop = cfg.account("api", "shop")
    assert shop is not None
    assert resolve_secret(shop) is None
    assert missing_secrets(cfg) == [
        "OMNIROUTE_SECRET_API_SHOP",
        "OMNIROUTE_SECRET_MAIL_SALES",
        "OMNIROUTE_SECRET_MAIL_WHOLESALE",
        "OMNIROUTE_SECRET_TELEGRAM_TOKEN",
        "OMNIROUTE_SECRET_TELEGRAM_WEBHOOK",
        "OMNIROUTE_SECRET_WHATSAPP_TOKEN",
        "OMNIROUTE_SECRET_WHATSAPP_APP_SECRET",
        "OMNIROUTE_SECRET_WHATSAPP_VERIFY_TOKEN",
        "OMNIROUTE_SECRET_VIBER_TOKEN",
        "OMNIROUTE_SECRET_VK_TOKEN",
        "OMNIROUTE_SECRET_VK_CALLBACK",
        "OMNIROUTE_SECRET_AVITO_CLIENT_SECRET",
        "OMNIROUTE_SECRET_AVITO_WEBHOOK",
        "OMNIROUTE_SECRET_MEGAFON_CRM_TOKEN",
        "OMNIROUTE_SECRET_MEGAFON_API_TOKEN",
        "OMNIROUTE_SECRET_PBX_SHOWROOM",
    ]


# --- settings ------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("OMNIROUTE_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_settings_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.mongodb_uri is None
    assert (s.db_name, s.host, s.port) == ("omniroute", "127.0.0.1", 8080)
    assert (s.log_format, s.log_level) == ("auto", "INFO")
    assert s.config_dir == DEFAULT_CONFIG_DIR
    assert s.data_dir == Path("var")
    assert s.embedded_data_dir == Path("var") / "mongo"
    assert s.embedded_port == 27018
    assert s.max_body_bytes == 1048576
    assert (s.route_batch_size, s.recovery_interval_s, s.intake_lease_s) == (64, 5.0, 30.0)


def test_settings_from_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("OMNIROUTE_MONGODB_URI", "mongodb://db:27017/?replicaSet=rs0")
    clean_env.setenv("OMNIROUTE_DB_NAME", "crm")
    clean_env.setenv("OMNIROUTE_PORT", "9000")
    clean_env.setenv("OMNIROUTE_LOG_FORMAT", "json")
    clean_env.setenv("OMNIROUTE_LOG_LEVEL", "debug")
    clean_env.setenv("OMNIROUTE_CONFIG_DIR", str(tmp_path))
    clean_env.setenv("OMNIROUTE_ROUTE_BATCH_SIZE", "8")
    clean_env.setenv("OMNIROUTE_INTAKE_LEASE_S", "2.5")
    clean_env.setenv("OMNIROUTE_UNRELATED", "ignored")
    s = get_settings()
    assert s.mongodb_uri == "mongodb://db:27017/?replicaSet=rs0"
    assert s.db_name == "crm"
    assert s.port == 9000
    assert s.log_format == "json"
    assert s.log_level == "DEBUG"
    assert s.config_dir == tmp_path
    assert s.route_batch_size == 8
    assert s.intake_lease_s == 2.5


def test_settings_empty_uri_means_embedded(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OMNIROUTE_MONGODB_URI", "")
    assert get_settings().mongodb_uri is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OMNIROUTE_LOG_LEVEL", "LOUD"),
        ("OMNIROUTE_LOG_FORMAT", "xml"),
        ("OMNIROUTE_PORT", "eighty"),
        ("OMNIROUTE_ROUTE_BATCH_SIZE", "0"),
    ],
)
def test_settings_reject_bad_values(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError):
        get_settings()
