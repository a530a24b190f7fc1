"""PostgreSQL wire protocol 3.0: sans-IO codec, auth maths, classifier and asyncio adapters."""
