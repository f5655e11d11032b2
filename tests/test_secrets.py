"""No part of a password reaches what pypool writes, logs, raises or shows."""

from __future__ import annotations

import pytest

from pypool.dbapi import mask_dsn

# ------------------------------------------------------------------ mask_dsn


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "host=h password=s3cr3t XYZ dbname=x",
            "host=h password=*** dbname=x",
        ),
        ("host=h password=s3cr3t XYZ", "host=h password=***"),
        ("'host=h password=s3cr3t XYZ W'", "'host=h password=***'"),
        ("host=h password=a b&sslmode=x", "host=h password=***&sslmode=x"),
        (
            "postgresql://u:s3cr3t XYZ@h/db",
            "postgresql://u:***@h/db",
        ),
        ("host=h password=s3cr3t XYZ\nDETAIL: x", "host=h password=***\nDETAIL: x"),
        ("PWD=s3cr3t XYZ;UID=u", "PWD=***;UID=u"),
        # prose after a password keeps its words...
        (
            'could not use "host=h password=pw": refused',
            'could not use "host=h password=*** refused',
        ),
        # ...and a URL without a password is not taken for one
        (
            "postgresql://h:5432/db failed for user@example",
            "postgresql://h:5432/db failed for user@example",
        ),
    ],
)
def test_mask_dsn_masks_a_malformed_password_whole(text: str, expected: str) -> None:
    assert mask_dsn(text) == expected
