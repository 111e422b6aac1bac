"""Argument types more than one tool area takes."""

from typing import Annotated

from pydantic import Field

Reason = Annotated[
    str | None,
    Field(
        max_length=2000,
        description="why you are doing this, in a sentence: kept with the action in the audit trail",
    ),
]
