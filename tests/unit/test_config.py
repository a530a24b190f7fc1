"""dbbalancer.toml -> Config, and every way a config can be wrong reported with path and hint."""

from __future__ import annotations

import re
from pathlib import Path

import pydantic
import pytest

from dbbalancer.config import (
    Address,
    AuthMethod,
    Balance,
    ClusterConfig,
    Config,
    ConfigError,
    ConfigProblem,
    GeneralConfig,
    LagLimit,
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
    load_config,
    parse_config,
)

MINIMAL_EXAMPLE = """\
[listen]
postgres = "127.0.0.1:6432"

[[users]]
name = "app"
password = "app"              # plaintext, or a "SCRAM-SHA-256$..." verifier
auth = "scram-sha-256"        # scram-sha-256 | md5 | trust

[[clusters]]
name = "main"                 # clients connect to this database name
protocol = "postgres"
database = "app"              # the database on the servers (default: the cluster name)
pool_mode = "session"
pool_size = 20                # server connections per server, per user

[[clusters.servers]]
address = "127.0.0.1:15432"
role = "primary"              # primary | replica (auto-detection comes later)

[[clusters.servers]]
address = "127.0.0.1:15433"
role = "replica"
"""

FULL_EXAMPLE = """\
[general]
log_level = "debug"
max_client_connections = 500
max_message_size = "64MB"
shutdown_timeout = "10s"
server_connect_timeout = "2s"
client_login_timeout = "15s"

[listen]
postgres = "127.0.0.1:0"
mysql = "[::1]:6033"

[[users]]
name = "app"
password = "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVka2V5:c2VydmVya2V5"
auth = "scram-sha-256"
server_password = "app-on-the-server"
pool_mode = "transaction"
max_client_connections = 100
default_route = "replica"

[[users]]
name = "legacy"
password = "md5d41d8cd98f00b204e9800998ecf8427e"
auth = "md5"
server_password = "legacy-on-the-server"

[[users]]
name = "monitor"
password = "monitor-pw"
auth = "trust"

[[clusters]]
name = "main"
protocol = "postgres"
database = "app"
pool_mode = "session"
pool_size = 30
min_pool_size = 2
reserve_pool_size = 5
reserve_pool_timeout = "3s"
query_wait_timeout = "60s"
server_idle_timeout = "5m"
server_lifetime = "1h"
idle_transaction_timeout = "0"
max_prepared_statements = 0
session_state = "error"
read_write_split = true
balance = "weighted"
replica_fallback = "error"
max_replica_lag = "16MB"
read_your_writes = true
read_only_transactions = "primary"
health_check_interval = "250ms"
health_check_timeout = "750ms"
rise = 1
fall = 5
primary_wait_timeout = "2s"

[[clusters.servers]]
address = "127.0.0.1:15432"
role = "primary"
weight = 0
name = "pg1"

[[clusters.servers]]
address = "localhost:15433"
role = "replica"
weight = 3

[[clusters.servers]]
address = "[::1]:15434"

[[clusters]]
name = "shop"
protocol = "mysql"

[[clusters.servers]]
address = "127.0.0.1:13306"
"""


def make(
    *,
    general: str = "",
    listen: str = 'postgres = "127.0.0.1:6432"',
    user: str = "",
    password: str = 'password = "secret"',
    cluster: str = "",
    role: str = 'role = "primary"',
    server: str = "",
    tail: str = "",
) -> str:
    """A valid config with extra lines inserted into one table; the base has no problems."""
    return f"""
[general]
{general}

[listen]
{listen}

[[users]]
name = "app"
{password}
{user}

[[clusters]]
name = "main"
{cluster}

[[clusters.servers]]
address = "127.0.0.1:15432"
{role}
{server}
{tail}
"""


def problems_of(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "dbbalancer.toml")
    problems = caught.value.problems
    for problem in problems:
        assert problem.hint, problem
        assert "Input should" not in problem.message, problem
    return problems


def only_problem(text: str) -> ConfigProblem:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


# --- what parses --------------------------------------------------------------------------


def test_minimal_example_parses_as_written() -> None:
    config = parse_config(MINIMAL_EXAMPLE)
    assert config.listen == ListenConfig(postgres=Address("127.0.0.1", 6432))
    assert config.listen.mysql is None
    (user,) = config.users
    assert (user.name, user.password, user.auth) == ("app", "app", AuthMethod.SCRAM_SHA_256)
    assert user.is_plaintext_password
    assert user.login_password == "app"
    (cluster,) = config.clusters
    assert cluster.name == "main"
    assert cluster.protocol is Protocol.POSTGRES
    assert cluster.server_database == "app"
    assert cluster.pool_mode is PoolMode.SESSION
    assert cluster.pool_size == 20
    assert [(s.address, s.role, s.name) for s in cluster.servers] == [
        (Address("127.0.0.1", 15432), Role.PRIMARY, "127.0.0.1:15432"),
        (Address("127.0.0.1", 15433), Role.REPLICA, "127.0.0.1:15433"),
    ]
    assert config.general == GeneralConfig()


def test_defaults() -> None:
    config = parse_config(make())
    general = config.general
    assert general.log_level is LogLevel.INFO
    assert general.max_client_connections == 10000
    assert general.max_message_size == 256 * 1024 * 1024
    assert (general.shutdown_timeout, general.server_connect_timeout) == (30.0, 5.0)
    assert general.client_login_timeout == 60.0
    user = config.users[0]
    assert (user.auth, user.pool_mode, user.default_route) == (
        AuthMethod.SCRAM_SHA_256,
        None,
        Route.AUTO,
    )
    assert user.server_password is None
    assert user.max_client_connections is None
    cluster = config.clusters[0]
    assert cluster.protocol is Protocol.POSTGRES
    assert cluster.database is None
    assert cluster.server_database == "main"
    assert (cluster.pool_mode, cluster.pool_size, cluster.min_pool_size) == (
        PoolMode.SESSION,
        20,
        0,
    )
    assert (cluster.reserve_pool_size, cluster.reserve_pool_timeout) == (0, 5.0)
    assert cluster.query_wait_timeout == 120.0
    assert cluster.server_idle_timeout == 600.0
    assert cluster.server_lifetime == 3600.0
    assert cluster.idle_transaction_timeout == 0.0
    assert cluster.max_prepared_statements == 200
    assert cluster.session_state is SessionStatePolicy.PIN
    assert cluster.read_write_split is False
    assert cluster.balance is Balance.ROUND_ROBIN
    assert cluster.replica_fallback is ReplicaFallback.PRIMARY
    assert cluster.max_replica_lag == LagLimit(max_seconds=1.0, max_bytes=None)
    assert cluster.read_your_writes is False
    assert cluster.read_only_transactions is ReadOnlyTransactions.REPLICA
    assert (cluster.health_check_interval, cluster.health_check_timeout) == (0.5, 1.0)
    assert (cluster.rise, cluster.fall, cluster.primary_wait_timeout) == (2, 3, 5.0)
    server = cluster.servers[0]
    assert (server.weight, server.name) == (1, "127.0.0.1:15432")


def test_every_key_parses_into_its_type() -> None:
    config = parse_config(FULL_EXAMPLE)
    assert config.general == GeneralConfig(
        log_level=LogLevel.DEBUG,
        max_client_connections=500,
        max_message_size=64 * 1024 * 1024,
        shutdown_timeout=10.0,
        server_connect_timeout=2.0,
        client_login_timeout=15.0,
    )
    assert config.listen.postgres == Address("127.0.0.1", 0)
    assert str(config.listen.mysql) == "[::1]:6033"
    app, legacy, monitor = config.users
    assert not app.is_plaintext_password
    assert app.login_password == "app-on-the-server"
    assert (app.pool_mode, app.max_client_connections, app.default_route) == (
        PoolMode.TRANSACTION,
        100,
        Route.REPLICA,
    )
    assert (legacy.auth, legacy.is_plaintext_password, legacy.login_password) == (
        AuthMethod.MD5,
        False,
        "legacy-on-the-server",
    )
    assert (monitor.auth, monitor.login_password) == (AuthMethod.TRUST, "monitor-pw")
    main, shop = config.clusters
    assert main.max_replica_lag == LagLimit(max_seconds=None, max_bytes=16 * 1024 * 1024)
    assert (main.server_idle_timeout, main.server_lifetime) == (300.0, 3600.0)
    assert (main.health_check_interval, main.health_check_timeout) == (0.25, 0.75)
    assert main.balance is Balance.WEIGHTED
    assert main.session_state is SessionStatePolicy.ERROR
    assert main.read_only_transactions is ReadOnlyTransactions.PRIMARY
    assert [(s.name, s.role, s.weight) for s in main.servers] == [
        ("pg1", Role.PRIMARY, 0),
        ("localhost:15433", Role.REPLICA, 3),
        ("[::1]:15434", Role.AUTO, 1),
    ]
    assert shop.protocol is Protocol.MYSQL
    assert shop.servers[0].address == Address("127.0.0.1", 13306)


def test_lookup_helpers() -> None:
    config = parse_config(FULL_EXAMPLE)
    app = config.user("app")
    main = config.cluster("main")
    shop = config.cluster("shop")
    legacy = config.user("legacy")
    assert app is not None
    assert main is not None
    assert shop is not None
    assert legacy is not None
    assert config.user("nobody") is None
    assert config.cluster("app") is None
    assert main.effective_pool_mode(app) is PoolMode.TRANSACTION
    assert main.effective_pool_mode(legacy) is PoolMode.SESSION
    assert shop.server_database == "shop"
    assert main.server("pg1") is main.servers[0]


def test_max_replica_lag_accepts_both_dimensions_or_none() -> None:
    both = parse_config(make(cluster='max_replica_lag = ["2s", "1MB"]')).clusters[0]
    assert both.max_replica_lag == LagLimit(max_seconds=2.0, max_bytes=1024 * 1024)
    unlimited = parse_config(make(cluster="max_replica_lag = []")).clusters[0]
    assert unlimited.max_replica_lag == LagLimit()


def test_models_are_frozen() -> None:
    config = parse_config(MINIMAL_EXAMPLE)
    with pytest.raises(pydantic.ValidationError):
        config.clusters[0].pool_size = 5  # type: ignore[misc]
    assert isinstance(config.clusters, tuple)
    assert isinstance(config.clusters[0].servers, tuple)
    assert hash(config) == hash(parse_config(MINIMAL_EXAMPLE))


def test_python_callers_may_give_seconds_and_objects() -> None:
    cluster = ClusterConfig(
        name="main",
        servers=(ServerConfig(address=Address("127.0.0.1", 1)),),
        query_wait_timeout=0.05,
        max_replica_lag=LagLimit(max_bytes=10),
    )
    assert cluster.query_wait_timeout == 0.05
    assert cluster.servers[0].name == "127.0.0.1:1"
    # The same bare number in the file is ambiguous and rejected.
    problem = only_problem(make(cluster="query_wait_timeout = 0.05"))
    assert problem.path == "clusters[0].query_wait_timeout"
    assert problem.hint == "write '5s' or '500ms'"


def test_python_construction_checks_the_same_rules() -> None:
    with pytest.raises(pydantic.ValidationError, match="has no servers"):
        ClusterConfig(name="main")
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        UserConfig(name="app", password="x", pool_sise=3)  # type: ignore[call-arg]


def test_json_schema_is_available() -> None:
    schema = Config.model_json_schema()
    assert "clusters" in schema["properties"]


# --- what does not parse, and how it is reported ------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "message", "hint"),
    [
        (
            make(cluster="pool_sise = 5"),
            "clusters[0].pool_sise",
            "unknown key 'pool_sise'",
            "did you mean 'pool_size'?",
        ),
        (
            make(general="log_levle = 'debug'"),
            "general.log_levle",
            "unknown key 'log_levle'",
            "did you mean 'log_level'?",
        ),
        (
            make(server="rol = 'replica'"),
            "clusters[0].servers[0].rol",
            "unknown key 'rol'",
            "did you mean 'role'?",
        ),
        (
            make(listen='postgres = "127.0.0.1:6432"\npostgress = "x"'),
            "listen.postgress",
            "unknown key 'postgress'",
            "did you mean 'postgres'?",
        ),
        (
            make(user="balance = 'random'"),
            "users[0].balance",
            "unknown key 'balance'",
            "'balance' belongs in [[clusters]]; move it there",
        ),
        (
            make(tail="[cluster]\nname = 'x'"),
            "cluster",
            "unknown key 'cluster'",
            "did you mean 'clusters'?",
        ),
    ],
)
def test_unknown_keys(text: str, path: str, message: str, hint: str) -> None:
    assert only_problem(text) == ConfigProblem(path, message, hint)


def test_unknown_key_without_a_close_match_lists_the_valid_keys() -> None:
    problem = only_problem(make(server="zzz = 1"))
    assert problem.path == "clusters[0].servers[0].zzz"
    assert problem.hint == "remove it; valid keys here are: address, role, weight, name"


@pytest.mark.parametrize(
    ("lines", "path", "message", "hint"),
    [
        (
            {"role": 'role = "master"'},
            "clusters[0].servers[0].role",
            "'master' is not valid",
            "use one of: primary, replica, auto",
        ),
        (
            {"cluster": 'pool_mode = "txn"'},
            "clusters[0].pool_mode",
            "'txn' is not valid",
            "use one of: session, transaction, statement",
        ),
        (
            {"cluster": 'balance = "fastest"'},
            "clusters[0].balance",
            "'fastest' is not valid",
            "use one of: round_robin, random, least_connections, weighted, least_latency, "
            "least_load",
        ),
        (
            {"user": 'auth = "password"'},
            "users[0].auth",
            "'password' is not valid",
            "use one of: scram-sha-256, md5, trust, mysql_native_password, caching_sha2_password",
        ),
        (
            {"user": 'pool_mode = "txn"'},
            "users[0].pool_mode",
            "'txn' is not valid",
            "use one of: session, transaction, statement",
        ),
        (
            {"general": 'log_level = "verbose"'},
            "general.log_level",
            "'verbose' is not valid",
            "use one of: debug, info, warning, error",
        ),
        (
            {"cluster": 'pool_size = "20"'},
            "clusters[0].pool_size",
            "'20' is not a whole number",
            "write an integer without quotes, e.g. 20",
        ),
        (
            {"cluster": "pool_size = 2.5"},
            "clusters[0].pool_size",
            "2.5 is not a whole number",
            "write an integer without quotes, e.g. 20",
        ),
        (
            {"cluster": "pool_size = 0"},
            "clusters[0].pool_size",
            "0 is too small",
            "use a value >= 1",
        ),
        (
            {"server": "weight = -1"},
            "clusters[0].servers[0].weight",
            "-1 is too small",
            "use a value >= 0",
        ),
        (
            {"cluster": "rise = 0"},
            "clusters[0].rise",
            "0 is too small",
            "use a value >= 1",
        ),
        (
            {"cluster": "fall = 0"},
            "clusters[0].fall",
            "0 is too small",
            "use a value >= 1",
        ),
        (
            {"cluster": 'read_write_split = "yes"'},
            "clusters[0].read_write_split",
            "'yes' is not true or false",
            "write true or false without quotes",
        ),
        (
            {"tail": "[[clusters]]\nname = 5\n[[clusters.servers]]\naddress = 'h:1'"},
            "clusters[1].name",
            "5 is not a string",
            "put the value in double quotes",
        ),
        (
            {"cluster": 'database = ""'},
            "clusters[0].database",
            "must not be empty",
            "give it a non-empty value",
        ),
        (
            {"cluster": 'query_wait_timeout = "5"'},
            "clusters[0].query_wait_timeout",
            "'5' has no unit",
            "write '5s' or '500ms'",
        ),
        (
            {"general": "shutdown_timeout = 30"},
            "general.shutdown_timeout",
            "30 has no unit",
            "write '5s' or '500ms'",
        ),
        (
            {"cluster": 'server_lifetime = "-1s"'},
            "clusters[0].server_lifetime",
            "'-1s' is negative; durations cannot be",
            "write 0 or a positive value",
        ),
        (
            {"cluster": 'health_check_timeout = "0s"'},
            "clusters[0].health_check_timeout",
            "must be more than 0",
            "write '5s' or '500ms'",
        ),
        (
            {"cluster": "health_check_timeout = 0"},
            "clusters[0].health_check_timeout",
            "must be more than 0",
            "write '5s' or '500ms'",
        ),
        (
            {"general": 'max_message_size = "16 parsecs"'},
            "general.max_message_size",
            "'16 parsecs' has an unknown unit 'parsecs'",
            "use one of: B, kB, KiB, MB, MiB, GB, GiB, TB, TiB",
        ),
        (
            {"cluster": 'max_replica_lag = ["1s", "2s"]'},
            "clusters[0].max_replica_lag",
            "two durations given",
            "give at most one size and one duration",
        ),
        (
            {"server": 'address = "127.0.0.1:0"'},
            "clusters[0].servers[1].address",
            "'127.0.0.1:0' has port 0 out of range",
            "use a port from 1 to 65535",
        ),
        (
            {"listen": 'postgres = "localhost"'},
            "listen.postgres",
            "'localhost' has no port",
            "write it as 'host:port', e.g. '127.0.0.1:6432' or '[::1]:6432'",
        ),
    ],
)
def test_bad_values(lines: dict[str, str], path: str, message: str, hint: str) -> None:
    if "address" in lines.get("server", ""):
        # A second server entry, so the base server's address stays valid.
        lines = {"tail": f"[[clusters.servers]]\n{lines['server']}"}
    assert only_problem(make(**lines)) == ConfigProblem(path, message, hint)


@pytest.mark.parametrize(
    ("lines", "path", "message", "hint"),
    [
        (
            {"tail": "[[clusters]]\nname = 'main'\n[[clusters.servers]]\naddress = 'h:1'"},
            "clusters[1].name",
            "cluster 'main' is defined twice",
            "give each cluster its own name",
        ),
        (
            {"tail": "[[users]]\nname = 'app'\npassword = 'x'"},
            "users[1].name",
            "user 'app' is defined twice",
            "keep one [[users]] entry",
        ),
        (
            {"tail": "[[clusters]]\nname = 'empty'"},
            "clusters[1].servers",
            "cluster 'empty' has no servers",
            'add a [[clusters.servers]] entry with address = "host:port"',
        ),
        (
            {"tail": "[[clusters.servers]]\naddress = '127.0.0.1:15432'"},
            "clusters[0].servers[1].address",
            "'127.0.0.1:15432' is listed twice in this cluster",
            "remove the duplicate server",
        ),
        (
            {"tail": "[[clusters.servers]]\naddress = 'h:2'\nname = '127.0.0.1:15432'"},
            "clusters[0].servers[1].name",
            "server name '127.0.0.1:15432' is used twice",
            "give each server its own name",
        ),
        (
            {"tail": "[[clusters.servers]]\naddress = 'h:2'\nrole = 'primary'"},
            "clusters[0].servers[1].role",
            "a second primary (servers[0] is already the primary)",
            'mark one server role = "primary" and the others "replica" or "auto"',
        ),
        (
            {"listen": 'mysql = "127.0.0.1:6033"'},
            "clusters[0].protocol",
            "cluster 'main' uses postgres, but [listen] has no postgres address",
            'add postgres = "127.0.0.1:6432" under [listen]',
        ),
        (
            {"cluster": 'protocol = "mysql"'},
            "clusters[0].protocol",
            "cluster 'main' uses mysql, but [listen] has no mysql address",
            'add mysql = "127.0.0.1:6033" under [listen]',
        ),
        (
            {"cluster": "min_pool_size = 21"},
            "clusters[0].min_pool_size",
            "21 is larger than pool_size (20)",
            "use a value <= 20, or raise pool_size",
        ),
        (
            {"cluster": 'balance = "weighted"', "server": "weight = 0"},
            "clusters[0].balance",
            "'weighted' needs a server with weight > 0, but every weight is 0",
            "give at least one server a positive weight",
        ),
        (
            {
                "password": 'password = "SCRAM-SHA-256$4096:c2FsdA==$c3Q=:c2U="',
                "user": 'auth = "md5"\nserver_password = "x"',
            },
            "users[0].password",
            "auth 'md5' cannot use a SCRAM-SHA-256 verifier as password",
            'give the plaintext password or a matching md5 hash, or set auth = "scram-sha-256"',
        ),
        (
            {
                "password": 'password = "md5d41d8cd98f00b204e9800998ecf8427e"',
                "user": 'server_password = "x"',
            },
            "users[0].password",
            "auth 'scram-sha-256' cannot use an md5 hash as password",
            'give the plaintext password or a matching SCRAM-SHA-256 verifier, or set auth = "md5"',
        ),
        (
            {"password": 'password = "SCRAM-SHA-256$4096:c2FsdA==$c3Q=:c2U="'},
            "users[0].server_password",
            "is missing, and the password is a hash that cannot log in to servers",
            "set server_password so dbbalancer can log in to the servers",
        ),
        (
            {"password": 'password = "SCRAM-SHA-256$4096:nope"', "user": 'server_password = "x"'},
            "users[0].password",
            "looks like a SCRAM-SHA-256 verifier but is malformed",
            "copy the whole value from pg_authid.rolpassword: "
            "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>",
        ),
        (
            {"password": ""},
            "users[0].password",
            "required key is missing",
            "add password = ... to this table",
        ),
        (
            {"user": 'server_password = "md5d41d8cd98f00b204e9800998ecf8427e"'},
            "users[0].server_password",
            "is a hash, but dbbalancer needs the plaintext to log in to servers",
            "give the servers' plaintext password",
        ),
    ],
)
def test_cross_field_rules(lines: dict[str, str], path: str, message: str, hint: str) -> None:
    assert only_problem(make(**lines)) == ConfigProblem(path, message, hint)


@pytest.mark.parametrize(
    ("text", "path", "message", "hint"),
    [
        ("", "clusters", "no cluster is configured", "add a [[clusters]] table"),
        ("clusters = 5", "clusters", "expected an array of tables, got 5", "[[clusters]]"),
        ("listen = 5", "listen", "expected a table, got 5", "[listen] table"),
        ("clusters = [5]", "clusters[0]", "expected a table, got 5", "[[clusters]] table"),
        ("[[clusters]]\nservers = 5", "clusters[0].name", "required key is missing", "add name"),
    ],
)
def test_structural_problems(text: str, path: str, message: str, hint: str) -> None:
    problem = problems_of(text)[0]
    assert (problem.path, problem.message) == (path, message)
    assert hint in problem.hint


def test_several_problems_are_reported_together() -> None:
    text = make(
        general='log_level = "loud"',
        user='auth = "password"',
        cluster="pool_sise = 5\nmin_pool_size = 50",
        role='role = "master"',
        tail=(
            "[[clusters]]\nname = 'other'\nprotocol = 'mysql'\n"
            "[[clusters.servers]]\naddress = 'h:1'\nrole = 'primary'\n"
            "[[clusters.servers]]\naddress = 'h:2'\nrole = 'primary'\n"
            "[[users]]\nname = 'app'\npassword = 'again'"
        ),
    )
    paths = [problem.path for problem in problems_of(text)]
    assert paths == [
        "general.log_level",
        "users[0].auth",
        "clusters[0].servers[0].role",
        "clusters[0].pool_sise",
        "clusters[1].servers[1].role",
        # Whole-file rules still run although tables above failed to validate.
        "users[1].name",
        "clusters[1].protocol",
    ]


def test_error_text_is_one_line_per_problem_prefixed_with_the_source() -> None:
    text = make(role='role = "master"', cluster="pool_size = 0")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "dbbalancer.toml")
    assert str(caught.value).splitlines() == [
        "dbbalancer.toml: clusters[0].pool_size: 0 is too small; use a value >= 1",
        "dbbalancer.toml: clusters[0].servers[0].role: 'master' is not valid; "
        "use one of: primary, replica, auto",
    ]


def test_toml_syntax_error_reports_line_and_column() -> None:
    text = '[listen]\npostgres = "127.0.0.1:6432"\n\n[[users]]\nname = app\n'
    problem = only_problem(text)
    assert problem.path == ""
    assert problem.message.startswith("TOML syntax error at line 5, column 8: ")


def test_secrets_never_appear_in_errors() -> None:
    bad = make(password='password = ["hunter2-very-secret"]', user="server_password = 7")
    with pytest.raises(ConfigError) as caught:
        parse_config(bad)
    assert "hunter2" not in str(caught.value)
    paths = [problem.path for problem in caught.value.problems]
    assert paths == ["users[0].password", "users[0].server_password"]
    verifier = make(password='password = "SCRAM-SHA-256$1:secretsalt"', user='auth = "md5"')
    with pytest.raises(ConfigError) as caught:
        parse_config(verifier)
    assert "secretsalt" not in str(caught.value)


# --- files --------------------------------------------------------------------------------


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "dbbalancer.toml"
    path.write_text(MINIMAL_EXAMPLE, encoding="utf-8")
    assert load_config(path) == parse_config(MINIMAL_EXAMPLE)
    assert load_config(str(path)) == parse_config(MINIMAL_EXAMPLE)


def test_load_config_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "dbbalancer.toml"
    path.write_text(make(cluster="pool_size = 0"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert str(caught.value).startswith(f"{path}: clusters[0].pool_size: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml")
    (problem,) = caught.value.problems
    assert problem.message.startswith("cannot read the file")
    assert problem.hint == "check the path and permissions"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[general]\nlog_level = "\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# --- describe -----------------------------------------------------------------------------


def test_describe_summarises_without_passwords() -> None:
    config = parse_config(FULL_EXAMPLE)
    summary = describe(config)
    for user in config.users:
        for secret in (user.password, user.server_password):
            if secret is not None:
                assert secret not in summary
        assert re.search(rf"^  {user.name}  auth={user.auth.value}\b", summary, re.MULTILINE)
    assert "  postgres  127.0.0.1:0" in summary
    assert "  mysql     [::1]:6033" in summary
    assert "  main  postgres database=app pool_mode=session pool_size=30" in summary
    assert "    pg1 (127.0.0.1:15432)  primary weight=0" in summary
    assert "    localhost:15433  replica weight=3" in summary
    assert "    127.0.0.1:13306  auto" in summary


# --- documentation ------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
TABLES: dict[str, type[pydantic.BaseModel]] = {
    "[general]": GeneralConfig,
    "[listen]": ListenConfig,
    "[[users]]": UserConfig,
    "[[clusters]]": ClusterConfig,
    "[[clusters.servers]]": ServerConfig,
}


@pytest.mark.parametrize("table", TABLES)
def test_every_key_is_documented(table: str) -> None:
    text = DOCS.read_text(encoding="utf-8")
    heading = f"## `{table}`"
    assert heading in text
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE))
    assert documented == set(TABLES[table].model_fields)


def test_config_tables_are_the_documented_ones() -> None:
    assert set(Config.model_fields) == {"general", "listen", "users", "clusters"}


def test_login_password_refuses_a_hash_that_skipped_validation() -> None:
    user = UserConfig.model_construct(name="app", password="md5" + "0" * 32, server_password=None)
    with pytest.raises(ValueError, match="no server_password"):
        _ = user.login_password


# --- MySQL clusters and users (issue #12) ----------------------------------------------------

MYSQL = 'postgres = "127.0.0.1:6432"\nmysql = "127.0.0.1:6033"'


@pytest.mark.parametrize(
    ("cluster", "path", "fragment"),
    [
        ('protocol = "mysql"\npool_mode = "statement"', "clusters[0].pool_mode", "issue #12"),
        (
            'protocol = "mysql"\npool_mode = "session"\nread_write_split = true',
            "clusters[0].read_write_split",
            "#12",
        ),
        ("local_infile = true", "clusters[0].local_infile", "MySQL setting"),
    ],
)
def test_mysql_cluster_rules(cluster: str, path: str, fragment: str) -> None:
    problem = only_problem(make(listen=MYSQL, cluster=cluster))
    assert problem.path == path
    assert fragment in problem.message


def test_mysql_cluster_in_session_mode_with_local_infile_parses() -> None:
    config = parse_config(
        make(listen=MYSQL, cluster='protocol = "mysql"\nlocal_infile = true'), "x.toml"
    )
    assert config.clusters[0].local_infile


def test_default_cluster_must_be_a_mysql_cluster() -> None:
    problem = only_problem(make(listen=MYSQL, user='default_cluster = "main"'))
    assert problem.path == "users[0].default_cluster"
    assert "not a MySQL cluster" in problem.message


def test_mysql_auth_needs_a_plaintext_password() -> None:
    text = make(
        password=f'password = "md5{"0" * 32}"\nserver_password = "x"',
        user='auth = "caching_sha2_password"',
    )
    problem = only_problem(text)
    assert problem.path == "users[0].password"
    assert "plaintext" in problem.message
