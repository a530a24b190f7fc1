"""Which user the health probes of a cluster log in as (compose.probe_user)."""

from __future__ import annotations

from dbbalancer.compose import probe_user
from dbbalancer.config import parse_config

CONFIG = """
[listen]
postgres = "127.0.0.1:6432"
mysql = "127.0.0.1:6033"

[[users]]
name = "pg_app"
password = "a"

[[users]]
name = "my_app"
password = "b"
auth = "mysql_native_password"

[[users]]
name = "shop_owner"
password = "c"
auth = "mysql_native_password"
default_cluster = "shop"

[[clusters]]
name = "main"
[[clusters.servers]]
address = "127.0.0.1:5432"

[[clusters]]
name = "app"
protocol = "mysql"
[[clusters.servers]]
address = "127.0.0.1:3306"

[[clusters]]
name = "shop"
protocol = "mysql"
[[clusters.servers]]
address = "127.0.0.1:3307"
"""


def test_each_cluster_is_probed_as_a_user_of_its_protocol() -> None:
    config = parse_config(CONFIG)
    clusters = {cluster.name: cluster for cluster in config.clusters}
    chosen = {name: probe_user(config, cluster) for name, cluster in clusters.items()}
    assert {name: user.name if user else None for name, user in chosen.items()} == {
        "main": "pg_app",  # the first user of a PostgreSQL method
        "app": "my_app",  # the first user of a MySQL plugin
        "shop": "shop_owner",  # the user whose default_cluster it is
    }
