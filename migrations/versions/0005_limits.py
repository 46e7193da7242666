"""limits: credential limits, workspace concurrency and daily token budget, max_tokens of an execution

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 08:40:00

Admission control (docs/decisions.md, "Admission control"): a credential may carry limits {max_concurrency,
requests_per_minute, tokens_per_minute}; a workspace has max_concurrency and tokens_per_day (NULL: the
WORKSPACE_* defaults, 0: unlimited); an execution may cap its reply with max_tokens. GET /usage groups a
workspace's executions by day, so (workspace_id, created_at) is indexed.
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


COLUMNS = [('credentials', sa.Column('limits', sa.JSON(), nullable=True)),
           ('workspaces', sa.Column('max_concurrency', sa.Integer(), nullable=True)),
           ('workspaces', sa.Column('tokens_per_day', sa.BigInteger(), nullable=True)),
           ('executions', sa.Column('max_tokens', sa.Integer(), nullable=True))]


def upgrade():
    for table, column in COLUMNS:
        op.add_column(table, column)
    op.create_index('ix_executions_workspace_created', 'executions', ['workspace_id', 'created_at'], unique=False)


def downgrade():
    op.drop_index('ix_executions_workspace_created', table_name='executions')
    for table, column in reversed(COLUMNS):
        # Plain ALTER TABLE on SQLite too (3.35+): a batch copy of workspaces would break audit_log's trigger on it.
        op.execute(f'ALTER TABLE {table} DROP COLUMN {column.name}')
