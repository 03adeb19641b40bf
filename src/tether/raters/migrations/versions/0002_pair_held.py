"""pairs.held: slots taken per pair, and an index on (is_gold, held, id) to pick a pair by seek.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('held', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_index('ix_pairs_pick', ['is_gold', 'held', 'id'], unique=False)
    # an existing project: count the slots its assignments already hold
    op.execute("UPDATE pairs SET held = (SELECT count(*) FROM assignments "
               "WHERE assignments.pair_id = pairs.id AND assignments.slot IS NOT NULL)")


def downgrade() -> None:
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.drop_index('ix_pairs_pick')
        batch_op.drop_column('held')
