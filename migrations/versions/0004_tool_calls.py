"""tool calls: agents declare tools, executions loop over turns, and a ledger records every call

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 08:40:00

The ledger row of a call (unique per execution and tool_call_id) is what lets a redelivered task skip a call
that already completed. Executions gain the loop's counters and bounds and what a pause waits for.
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

PAUSED = "paused_until IS NOT NULL"
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    with op.batch_alter_table('agents') as batch:
        batch.add_column(sa.Column('tools', sa.JSON(), nullable=True))
    with op.batch_alter_table('executions') as batch:
        batch.add_column(sa.Column('turns', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('max_turns', sa.Integer(), nullable=False, server_default='8'))
        batch.add_column(sa.Column('wait_timeout_s', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('conversation', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('required_action', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('pending_approval', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('paused_until', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_executions_paused_until', 'executions', ['paused_until'], unique=False,
                    postgresql_where=sa.text(PAUSED), sqlite_where=sa.text(PAUSED))
    op.create_table(
        'tool_calls',
        sa.Column('id', BigId, primary_key=True, autoincrement=True),
        sa.Column('execution_id', sa.String(length=36), sa.ForeignKey('executions.id'), nullable=False),
        sa.Column('tool_call_id', sa.String(length=128), nullable=False),
        sa.Column('turn', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('action', sa.String(length=64), nullable=False),
        sa.Column('arguments', sa.JSON(), nullable=True),
        sa.Column('status', sa.String(length=24), nullable=False),
        sa.Column('output', sa.JSON(), nullable=True),
        sa.Column('error', sa.JSON(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint('execution_id', 'tool_call_id', name='uq_tool_calls_execution_call'),
    )
    op.create_index('ix_tool_calls_execution_turn', 'tool_calls', ['execution_id', 'turn', 'id'], unique=False)


def downgrade():
    op.drop_index('ix_tool_calls_execution_turn', table_name='tool_calls')
    op.drop_table('tool_calls')
    op.drop_index('ix_executions_paused_until', table_name='executions')
    with op.batch_alter_table('executions') as batch:
        for name in ('paused_until', 'pending_approval', 'required_action', 'conversation', 'wait_timeout_s',
                     'max_turns', 'turns'):
            batch.drop_column(name)
    with op.batch_alter_table('agents') as batch:
        batch.drop_column('tools')
