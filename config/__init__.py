"""Configuration: process settings from the environment, routing setup from YAML.

* :class:`Settings` / :func:`get_settings` — ``OMNIROUTE_*`` environment variables.
* :func:`load_config` — the YAML files of a configuration directory (by default this
  package's directory, which ships a worked example) as one checked :class:`AppConfig`.

See ``docs/configuration.md`` for every key.
"""

from config.loader import (
    CONFIG_FILES,
    ConfigError,
    ConfigProblem,
    check_config,
    load_config,
    missing_secrets,
    resolve_secret,
)
from config.models import (
    AppConfig,
    CalendarFile,
    ChannelAccount,
    ChannelsFile,
    Department,
    Pipeline,
    PipelineKind,
    PipelinesFile,
    Role,
    Source,
    SourceMode,
    SourcesFile,
    Stage,
    StageOutcome,
    User,
    UsersFile,
    WorkingHours,
)
from config.settings import DEFAULT_CONFIG_DIR, Settings, get_settings

__all__ = [
    "CONFIG_FILES",
    "DEFAULT_CONFIG_DIR",
    "AppConfig",
    "CalendarFile",
    "ChannelAccount",
    "ChannelsFile",
    "ConfigError",
    "ConfigProblem",
    "Department",
    "Pipeline",
    "PipelineKind",
    "PipelinesFile",
    "Role",
    "Settings",
    "Source",
    "SourceMode",
    "SourcesFile",
    "Stage",
    "StageOutcome",
    "User",
    "UsersFile",
    "WorkingHours",
    "check_config",
    "get_settings",
    "load_config",
    "missing_secrets",
    "resolve_secret",
]
