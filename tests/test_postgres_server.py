"""The `postgres_url` fixture gives a real, writable PostgreSQL database."""

from __future__ import annotations

import sqlalchemy


def test_is_a_real_postgresql_server(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sqlalchemy.text("SELECT version()")).scalar_one()
            database = conn.execute(sqlalchemy.text("SELECT current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert version.startswith("PostgreSQL ")
    assert database == "softprompt_test"


def test_rows_written_in_a_transaction_are_read_back(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    metadata = sqlalchemy.MetaData()
    prompts = sqlalchemy.Table(
        "prompts",
        metadata,
        sqlalchemy.Column("id", sqlalchemy.Integer, primary_key=True),
        sqlalchemy.Column("text", sqlalchemy.Text, nullable=False),
    )
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:  # one transaction, committed on leaving the block
            conn.execute(prompts.insert(), [{"text": "Review: a great movie"}, {"text": "Sentiment: 好"}])
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.select(prompts.c.text).order_by(prompts.c.id)).scalars().all()
        assert rows == ["Review: a great movie", "Sentiment: 好"]
    finally:
        metadata.drop_all(engine)
        engine.dispose()
