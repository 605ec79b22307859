"""retention: when a job's, an artifact's or a dataset's stored objects were swept (the rows stay), and a
job's retention (days) and the date it makes

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expired_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_expired_at'), ['expired_at'], unique=False)
        batch_op.add_column(sa.Column('retention_days', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_expires_at'), ['expires_at'], unique=False)
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expired_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expired_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_column('expired_at')
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.drop_column('expired_at')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_expires_at'))
        batch_op.drop_column('expires_at')
        batch_op.drop_column('retention_days')
        batch_op.drop_index(batch_op.f('ix_jobs_expired_at'))
        batch_op.drop_column('expired_at')
