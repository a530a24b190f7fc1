"""Typed settings loaded from TOML: ``load_config(path) -> Config`` or a ConfigError listing
every problem with its key path and a hint. See docs/configuration.md for every key."""

from dbbalancer.config.loader import ConfigError, load_config, parse_config
from dbbalancer.config.model import (
    AuthMethod,
    Balance,
    ClusterConfig,
    Config,
    ConfigProblem,
    GeneralConfig,
    ListenConfig,
    LogLevel,
    PoolMode,
    Protocol,
    ReadOnlyTransactions,
    ReplicaFallback,
    Role,
    Route,
    ServerConfig,
    SessionStatePolicy,
    UserConfig,
    describe,
)
from dbbalancer.config.units import Address, LagLimit

__all__ = [
    "Address",
    "AuthMethod",
    "Balance",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "GeneralConfig",
    "LagLimit",
    "ListenConfig",
    "LogLevel",
    "PoolMode",
    "Protocol",
    "ReadOnlyTransactions",
    "ReplicaFallback",
    "Role",
    "Route",
    "ServerConfig",
    "SessionStatePolicy",
    "UserConfig",
    "describe",
    "load_config",
    "parse_config",
]
