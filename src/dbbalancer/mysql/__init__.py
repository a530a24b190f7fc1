"""MySQL/MariaDB wire protocol: codec.py (sans-IO framing and messages), auth.py (the password
maths) and classify.py (the dialect's statements). The asyncio adapters and the probe come next
(issue #12)."""
