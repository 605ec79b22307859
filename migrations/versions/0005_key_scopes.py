"""API keys: admin flag, scopes, per-key limits, last use (keys made before get every tenant scope)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 01:40:07.693788
"""
from alembic import op
import json

import sqlalchemy as sa

# shared.db.keys.SCOPES when this revision was written: what keys made before scopes existed could do
ALL_SCOPES = ["jobs:read", "jobs:write", "datasets:read", "datasets:write", "webhooks:read", "webhooks:write"]


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('admin', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(
            sa.Column('scopes', sa.JSON(), server_default=sa.text(f"'{json.dumps(ALL_SCOPES)}'"), nullable=False)
        )
        batch_op.add_column(sa.Column('limits', sa.JSON(), server_default=sa.text("'{}'"), nullable=False))
        batch_op.add_column(sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('last_used_at')
        batch_op.drop_column('limits')
        batch_op.drop_column('scopes')
        batch_op.drop_column('admin')
