"""The profile store: PostgreSQL through SQLAlchemy 2 (psycopg 3), the only module touching it."""
