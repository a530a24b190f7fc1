"""Balancer configs for a local PgCluster, shared by the integration tests and the demo."""

from __future__ import annotations

from dbbalancer.testing.pgcluster import PgCluster


def cluster_config(
    cluster: PgCluster,
    *,
    listen: str = "127.0.0.1:0",
    mode: str = "session",
    pool_size: int = 20,
    split: bool = False,
    roles: str = "configured",
    weights: dict[str, int] | None = None,
    addresses: dict[str, str] | None = None,
    users: str = "",
    extra: str = "",
) -> str:
    """TOML for one cluster named "main" in front of `cluster`.

    `roles = "configured"` writes primary/replica as started; `"auto"` lets the probes decide.
    `users` adds [[users]] tables after the cluster's own user; `extra` adds cluster keys.
    `addresses` replaces the address of the servers it names (e.g. with a relay in front).
    """
    servers = []
    for node in cluster.nodes:
        configured = "primary" if node == cluster.primary else "replica"
        role = "auto" if roles == "auto" else configured
        lines = [
            "[[clusters.servers]]",
            f'name = "{node.name}"',
            f'address = "{(addresses or {}).get(node.name, node.address())}"',
            f'role = "{role}"',
        ]
        if weights and node.name in weights:
            lines.append(f"weight = {weights[node.name]}")
        servers.append("\n".join(lines))
    return f"""
[listen]
postgres = "{listen}"

[[users]]
name = "{cluster.user}"
password = "{cluster.password}"
auth = "scram-sha-256"
{users}
[[clusters]]
name = "main"
database = "{cluster.database}"
pool_mode = "{mode}"
pool_size = {pool_size}
read_write_split = {"true" if split else "false"}
{extra}

{chr(10).join(servers)}
"""
