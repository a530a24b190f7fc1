"""MySQL and MariaDB wire protocol."""
