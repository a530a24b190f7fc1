"""dbbalancer: one endpoint in front of a database primary and its replicas."""

__version__ = "0.1.0"
