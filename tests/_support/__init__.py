"""Shared test support: fakes, waiting helpers, fault injection and the
harnesses that drive peers (psycopg_pool, SQLAlchemy) beside pypool.

Each module here holds one kind of help; test modules import from here and
never from one another.
"""
