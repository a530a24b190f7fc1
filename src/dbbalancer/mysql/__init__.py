"""MySQL/MariaDB wire protocol (not yet implemented)."""
