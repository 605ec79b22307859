"""continue: a job that trains on from another job's end (POST /v1/jobs/{id}/continue)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08
"""
from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('continued_from', sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_continued_from'), ['continued_from'], unique=False)
        batch_op.create_foreign_key(
            'fk_jobs_continued_from', 'jobs', ['continued_from'], ['id'], ondelete='SET NULL'
        )


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint('fk_jobs_continued_from', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_jobs_continued_from'))
        batch_op.drop_column('continued_from')
