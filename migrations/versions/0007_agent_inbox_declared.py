"""inbox_declared_at on agents

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 14:30:00

An agent's inbox queue is declared when it is first sent a message, not when the agent is created, so
registering an agent costs the broker nothing. The column says which agents have a queue (the mailbox's
safety sweep asks only those). Agents created before this revision had their queue declared with them.
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('agents', sa.Column('inbox_declared_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE agents SET inbox_declared_at = created_at WHERE deleted_at IS NULL")


def downgrade():
    op.drop_column('agents', 'inbox_declared_at')
