"""partial index on unfinished executions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 13:40:00

The workers sweep pending executions whose chain no broker confirmed (a web process died between the commit and
the confirm) and running ones long past their deadline that no task will end; this index keeps those queries to
the unfinished rows.
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

UNFINISHED = "status IN ('pending', 'running')"


def upgrade():
    op.create_index('ix_executions_unfinished_created', 'executions', ['created_at'], unique=False,
                    postgresql_where=sa.text(UNFINISHED), sqlite_where=sa.text(UNFINISHED))


def downgrade():
    op.drop_index('ix_executions_unfinished_created', table_name='executions')
