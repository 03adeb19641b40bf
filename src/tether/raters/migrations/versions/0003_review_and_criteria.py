"""Per-criterion questions, daily targets, skip reasons, pairs set aside and adjudicated.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('project', schema=None) as batch_op:
        batch_op.add_column(sa.Column('criteria', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('daily_target', sa.Integer(), nullable=True))
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('set_aside', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('adjudication', sa.String(length=3), nullable=True))
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('criteria', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('skip_reason', sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_column('skip_reason')
        batch_op.drop_column('criteria')
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.drop_column('adjudication')
        batch_op.drop_column('set_aside')
    with op.batch_alter_table('project', schema=None) as batch_op:
        batch_op.drop_column('daily_target')
        batch_op.drop_column('criteria')
