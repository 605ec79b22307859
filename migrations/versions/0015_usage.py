"""usage: per-owner usage counters and what a job's resume state holds

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08
"""
from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('usage',
    sa.Column('owner', sa.String(length=200), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('gpu', sa.String(length=200), nullable=False),
    sa.Column('gpu_seconds', sa.Float(), nullable=False),
    sa.Column('steps_trained', sa.BigInteger(), nullable=False),
    sa.Column('images_captioned', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('owner', 'day', 'kind', 'gpu')
    )
    op.create_table('job_usage',
    sa.Column('job_id', sa.String(length=32), nullable=False),
    sa.Column('run_token', sa.String(length=32), nullable=True),
    sa.Column('gpu_seconds', sa.Float(), nullable=False),
    sa.Column('steps_trained', sa.Integer(), nullable=False),
    sa.Column('images_captioned', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('resume_state_bytes', sa.BigInteger(), server_default='0', nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('resume_state_bytes')
    op.drop_table('job_usage')
    op.drop_table('usage')
