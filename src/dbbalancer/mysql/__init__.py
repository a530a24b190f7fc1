"""MySQL/MariaDB wire protocol: codec.py (sans-IO framing and messages) and auth.py (the
password maths). The asyncio adapters, classifier and probe come next (issue #12)."""
