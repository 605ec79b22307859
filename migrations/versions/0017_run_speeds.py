"""run_speeds: measured training and captioning speeds the estimates read; jobs.estimated_seconds; the GPUs
each worker reports with its heartbeat (workers.gpus)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08
"""
from alembic import op
import sqlalchemy as sa


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('run_speeds',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('family', sa.String(length=10), nullable=True),
    sa.Column('gpu_model', sa.String(length=200), nullable=False),
    sa.Column('method', sa.String(length=20), nullable=True),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('steps_per_second', sa.Float(), nullable=True),
    sa.Column('overhead_seconds', sa.Float(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('job_id')
    )
    with op.batch_alter_table('run_speeds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_speeds_finished_at'), ['finished_at'], unique=False)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('estimated_seconds', sa.Float(), nullable=True))
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gpus', sa.JSON(), nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_column('gpus')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('estimated_seconds')
    with op.batch_alter_table('run_speeds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_speeds_finished_at'))
    op.drop_table('run_speeds')
