"""Every problem of an uploaded zip at once, so it is fixed in one round instead of one per upload.

Checks add what they find to a `Problems` instead of raising the first; the caller raises them together as
one DatasetError that keeps the first problem's code, status and details (what clients read before) and
lists them all in `details.problems`, bounded: past MAX_LISTED only a count (`details.more_problems`).
"""

from __future__ import annotations

from typing import Any

from shared.errors import DatasetError

MAX_LISTED = 50
IN_MESSAGE = 10  # the CLI and the page show only the message: spell out this many there
# Problems after which the zip's contents are not read (decoded) to look for more: that is what a bomb wants.
UNSAFE_TO_READ = ("zip_bomb",)


class Problems:
    def __init__(self) -> None:
        self.listed: list[DatasetError] = []
        self.more = 0
        self.codes: set[str] = set()

    def add(self, error: DatasetError) -> None:
        self.codes.add(error.code)
        if len(self.listed) < MAX_LISTED:
            self.listed.append(error)
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.listed)

    def __len__(self) -> int:
        return len(self.listed) + self.more

    def has(self, *codes: str) -> bool:
        return not self.codes.isdisjoint(codes)

    def raise_any(self) -> None:
        if self.listed:
            raise self.error()

    def error(self) -> DatasetError:
        first, total = self.listed[0], len(self)
        message = first.message
        if total > 1:
            shown = self.listed[:IN_MESSAGE]
            message = f"The zip has {total} problems: " + " ".join(e.message for e in shown)
            if total > len(shown):
                message += f" ... and {total - len(shown)} more (details.problems lists up to {MAX_LISTED})."
        details: dict[str, Any] = {
            **first.details,
            "problems": [
                {"file": e.details.get("entry"), "code": e.code, "problem": e.message} for e in self.listed
            ],
            "more_problems": self.more,
        }
        return DatasetError(message, code=first.code, status_code=first.status_code, details=details)
