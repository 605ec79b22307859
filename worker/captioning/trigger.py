"""The trigger word in a generated caption: first (Kohya's keep_tokens habit: ``lisabp, a woman ...``), or in
place of the subject's article (``a woman in red`` -> ``lisabp woman in red``), the trigger and class word
taken from the config or else from the image's Kohya folder (``6_lisabp woman``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.config.captioning import CaptionConfig
from shared.datasets.layout import DatasetLayout


@dataclass(frozen=True)
class Subject:
    trigger: str | None
    class_word: str | None


NO_SUBJECT = Subject(None, None)


def folder_subjects(layout: DatasetLayout) -> dict[str, Subject]:
    """Training image path -> its folder's trigger and class word."""
    return {
        image.path: Subject(subset.trigger, subset.class_token)
        for subset in layout.train_subsets
        for image in subset.images
    }


def subject_for(config: CaptionConfig, folder: Subject | None) -> Subject:
    """The config's words win over the folder's."""
    folder = folder or NO_SUBJECT
    return Subject(config.trigger_word or folder.trigger, config.class_word or folder.class_word)


def has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE) is not None


def place_trigger(text: str, subject: Subject, placement: str, separator: str = ", ") -> str:
    """``text`` with the trigger word placed; unchanged without a trigger, with placement ``none``, or when
    the caption already has the word (an appended caption, or a model told the name)."""
    trigger = subject.trigger
    if placement == "none" or not trigger or has_word(text, trigger):
        return text
    if placement == "subject" and subject.class_word:
        replaced = _replace_article(text, trigger, subject.class_word)
        if replaced is not None:
            return replaced
    return f"{trigger}{separator}{text}" if text else trigger


def _replace_article(text: str, trigger: str, class_word: str) -> str | None:
    # The class word's first mention, with the article before it if any: "A woman" -> "lisabp woman",
    # "a young woman" -> "a young lisabp woman". None when the caption never names the class.
    words = r"\s+".join(re.escape(w) for w in class_word.split())
    pattern = re.compile(rf"(?<!\w)(?:(?:a|an|the|one)\s+)?({words})(?!\w)", flags=re.IGNORECASE)
    match = pattern.search(text)
    if match is None:
        return None
    return f"{text[: match.start()]}{trigger} {match.group(1)}{text[match.end() :]}"
