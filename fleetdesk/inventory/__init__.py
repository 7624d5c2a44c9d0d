"""The inventory: SQLAlchemy models, Alembic migrations, and a repository that returns dataclasses."""
