"""traceparent on executions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 09:00:00

With tracing on, each execution stores the W3C traceparent of the span that created it, so a chain sent later
(the workers' sweep re-queueing a chain no broker confirmed, an approval) joins the execution's trace.
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('executions', sa.Column('traceparent', sa.String(length=55), nullable=True))


def downgrade():
    op.drop_column('executions', 'traceparent')
