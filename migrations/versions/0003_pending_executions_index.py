"""partial index on pending executions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 13:40:00

The worker sweeps pending executions older than a grace period whose chain no broker confirmed (a web process
died between the commit and the confirm); this index keeps that query to the pending rows.
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_executions_pending_created', 'executions', ['created_at'], unique=False,
                    postgresql_where=sa.text("status = 'pending'"), sqlite_where=sa.text("status = 'pending'"))


def downgrade():
    op.drop_index('ix_executions_pending_created', table_name='executions')
