"""audit chain head on the workspace row

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 12:45:00

Appending to a workspace's audit chain locked the workspace row and then read the last audit row's hash in a
second statement. The head now lives on the locked row itself, kept by a trigger on every audit insert, so the
lock and the read are one statement (under READ COMMITTED, a row locked after a wait is returned in its newest
committed version) and the lock is held for one round trip less.
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


CHAIN_HEAD_PG = """
CREATE OR REPLACE FUNCTION audit_log_chain_head() RETURNS trigger AS $$
BEGIN
    UPDATE workspaces SET audit_head = NEW.hash WHERE id = NEW.workspace_id;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_log_chain_head AFTER INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_chain_head();
"""

CHAIN_HEAD_SQLITE = (
    "CREATE TRIGGER audit_log_chain_head AFTER INSERT ON audit_log "
    "BEGIN UPDATE workspaces SET audit_head = NEW.hash WHERE id = NEW.workspace_id; END"
)

BACKFILL = """
UPDATE workspaces SET audit_head = (
    SELECT audit_log.hash FROM audit_log WHERE audit_log.workspace_id = workspaces.id
    ORDER BY audit_log.id DESC LIMIT 1
)
"""


def upgrade():
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.add_column(sa.Column('audit_head', sa.String(length=64), nullable=True))
    op.execute(BACKFILL)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CHAIN_HEAD_PG)
    else:
        op.execute(CHAIN_HEAD_SQLITE)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_chain_head ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_chain_head()")
        op.drop_column('workspaces', 'audit_head')
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_log_chain_head")
        op.execute("ALTER TABLE workspaces DROP COLUMN audit_head")
