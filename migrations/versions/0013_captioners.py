"""captioners: the captioner models workers report

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # captioner models share the catalogue with base models: kind 'captioner', and the method each serves
    with op.batch_alter_table('base_models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('captioner', sa.String(length=20), nullable=True))


def downgrade() -> None:
    op.execute(
        "DELETE FROM worker_models WHERE name IN (SELECT name FROM base_models WHERE kind = 'captioner')"
    )
    op.execute("DELETE FROM base_models WHERE kind = 'captioner'")
    with op.batch_alter_table('base_models', schema=None) as batch_op:
        batch_op.drop_column('captioner')
