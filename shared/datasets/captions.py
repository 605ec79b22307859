"""Caption editing rules for stored datasets: tags, find/replace, and rebuilding older revisions."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def split_tags(caption: str) -> list[str]:
    """Kohya's tags: the comma-separated parts of a caption, trimmed."""
    return [t.strip() for t in caption.split(",") if t.strip()]


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def tag_frequency(captions: Iterable[str | None]) -> list[tuple[str, int]]:
    counts = Counter(tag for c in captions if c for tag in split_tags(c))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


class CaptionSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_id: str
    caption: str | None = Field(description="null: train on the folder's `trigger class` instead")


class FindReplace(BaseModel):
    model_config = ConfigDict(extra="forbid")
    find: str = Field(min_length=1)
    replace: str = ""
    regex: bool = False

    @model_validator(mode="after")
    def _valid_regex(self) -> FindReplace:
        if self.regex:
            try:
                re.compile(self.find)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return self


class CaptionEdit(BaseModel):
    """One edit request; applied in field order: set, find_replace, remove_tags, add_tags."""

    model_config = ConfigDict(extra="forbid")
    expected_revision: int | None = Field(None, description="409 if the captions changed since this revision")
    set: list[CaptionSet] = []
    find_replace: list[FindReplace] = []
    remove_tags: list[str] = []
    add_tags: list[str] = []
    add_position: Literal["start", "end"] = "end"
    image_ids: list[str] | None = Field(None, description="limit find/replace and tag edits to these images")


def edit_caption(caption: str | None, edit: CaptionEdit) -> str | None:
    """The caption after the bulk operations of `edit` (not `set`, which the caller applies first)."""
    text = caption or ""
    for rule in edit.find_replace:
        text = re.sub(rule.find, rule.replace, text) if rule.regex else text.replace(rule.find, rule.replace)
    if edit.remove_tags or edit.add_tags:
        drop = {t.strip() for t in edit.remove_tags}
        tags = [t for t in split_tags(text) if t not in drop]
        new = [t.strip() for t in edit.add_tags if t.strip() and t.strip() not in tags]
        tags = new + tags if edit.add_position == "start" else tags + new
        text = join_tags(tags)
    if caption is None and not text:
        return None  # untouched folder-default captions stay folder defaults
    return text


def captions_at_revision(
    current: Mapping[str, str | None], revision: int, history: Iterable[tuple[int, list[dict]]]
) -> dict[str, str | None]:
    """Undo every change newer than `revision`; `history` is (revision, [{"id","before","after"}]) pairs."""
    captions = dict(current)
    for rev, changes in sorted(history, key=lambda item: item[0], reverse=True):
        if rev <= revision:
            break
        for change in changes:
            captions[change["id"]] = change["before"]
    return captions
