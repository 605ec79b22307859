"""AUTOMATIC1111's `<lora:NAME:WEIGHT>` prompt tags, parsed without torch (the API checks them before a job
is stored; the worker applies what the API resolved).

A tag is ``<lora:NAME>``, ``<lora:NAME:WEIGHT>`` or A1111's ``<lora:NAME:TE_WEIGHT:UNET_WEIGHT>`` (the
text encoders' multiplier, then the U-Net's; with one weight both get it, as A1111 reads it). Weights are
decimal numbers and may be negative. The tags are removed from the prompt text and the whitespace they
leave collapsed (CLIP's tokenizer reads "a  b" as "a b" anyway). The same NAME twice is one LoRA whose
weights are the sums of the tags' weights: A1111 applies each tag's delta in turn, which adds up to that.

Where A1111 leaves a tag it cannot read in the text or fails later, this module raises a ValueError naming
the tag, so the API answers 422 before any work is done. ``lora`` is read in any case (A1111 reads only
lowercase and would silently keep ``<Lora:x>`` as prompt text, which no one means).

Kohya's ``--n --w --h --d --l --s --ss`` flags on the same line are read by shared/config/sample_prompts.py;
:func:`parse_generation_line` does both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from shared.config.sample_prompts import FLAGS, SamplePrompt, parse_prompt_line

TAG = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)
# anything that looks like a LoRA tag but does not match TAG (e.g. an unclosed one) is refused
_LOOSE = re.compile(r"<\s*lora\s*:", re.IGNORECASE)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
MAX_LORAS = 10  # distinct LoRAs in one prompt
MAX_WEIGHT = 10.0  # |weight|; A1111 takes any float, far past the point where images mean anything
MAX_NAME = 200


@dataclass(frozen=True)
class LoraTag:
    """One LoRA of a prompt: its name and the multipliers on its text-encoder and U-Net deltas."""

    name: str
    te_weight: float
    unet_weight: float
    tag: str  # the first tag naming it, as written (what an error about it names)


@dataclass(frozen=True)
class LoraPrompt:
    prompt: str  # the text without its tags
    loras: tuple[LoraTag, ...]  # one per name, in the order the names first appear


def _weight(text: str, tag: str) -> float:
    value = text.strip()
    if not _NUMBER.match(value):
        raise ValueError(f"{tag}: the weight {value!r} is not a number")
    weight = float(value)
    if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
        raise ValueError(f"{tag}: the weight must be -{MAX_WEIGHT:g}..{MAX_WEIGHT:g}, got {value}")
    return weight


def _tag(body: str, tag: str) -> LoraTag:
    parts = body.split(":")
    name = parts[0].strip()
    if not name:
        raise ValueError(f"{tag}: the LoRA name is missing")
    if len(name) > MAX_NAME:
        raise ValueError(f"{tag}: the LoRA name is longer than {MAX_NAME} characters")
    if len(parts) > 3:
        raise ValueError(f"{tag}: at most two weights (text encoder, U-Net) follow the name")
    te = _weight(parts[1], tag) if len(parts) > 1 else 1.0
    unet = _weight(parts[2], tag) if len(parts) > 2 else te
    return LoraTag(name=name, te_weight=te, unet_weight=unet, tag=tag)


def parse_lora_tags(text: str) -> LoraPrompt:
    """The prompt without its `<lora:...>` tags, and its LoRAs (same name: weights summed). ValueError
    naming the tag for one that cannot be read."""
    found: dict[str, LoraTag] = {}
    for match in TAG.finditer(text):
        tag = _tag(match.group(1), match.group(0))
        seen = found.get(tag.name)
        if seen is not None:
            te, unet = seen.te_weight + tag.te_weight, seen.unet_weight + tag.unet_weight
            tag = LoraTag(tag.name, te, unet, seen.tag)
        found[tag.name] = tag
    rest = TAG.sub(" ", text)
    if _LOOSE.search(rest):
        raise ValueError("a '<lora:' tag is not closed with '>'")
    if len(found) > MAX_LORAS:
        raise ValueError(f"at most {MAX_LORAS} different LoRAs in one prompt, got {len(found)}")
    return LoraPrompt(prompt=" ".join(rest.split()), loras=tuple(found.values()))


def has_lora_tag(text: str) -> bool:
    return _LOOSE.search(text) is not None


def line_flags(line: str) -> set[str]:
    """The Kohya flags a prompt line sets (``{"w", "s"}`` for ``a cat --w 512 --s 20``), split as
    sample_prompts splits a line, so a body field can be checked against the same flag."""
    text = line.strip()
    pieces = (" " + text if text.startswith("--") else text).split(" --")
    flags = {piece.strip().split(maxsplit=1)[0].lower() for piece in pieces[1:] if piece.strip()}
    return flags & set(FLAGS)


@dataclass(frozen=True)
class GenerationLine:
    settings: SamplePrompt  # prompt (tags removed), and what the line's flags set (the rest: defaults)
    loras: tuple[LoraTag, ...]
    flags: frozenset[str]  # the flags the line set


def parse_generation_line(line: str) -> GenerationLine:
    """A preview prompt: A1111 tags in the text and Kohya flags after it. ValueError naming what is wrong;
    a tag in the negative prompt (``--n``) is refused: A1111 applies only the prompt's tags."""
    if "\n" in line.strip():
        raise ValueError("the prompt is one line (Kohya flags and <lora:...> tags on that line)")
    parsed = parse_prompt_line(line if line.strip() else "")
    if parsed is None:
        if line.strip().startswith("#"):
            raise ValueError("the prompt starts with '#', which makes a Kohya prompt line a comment")
        parsed = SamplePrompt(prompt="")
    if has_lora_tag(parsed.negative_prompt):
        raise ValueError("<lora:...> tags apply only in the prompt, not in the negative prompt (--n)")
    tags = parse_lora_tags(parsed.prompt)
    settings = parsed.model_copy(update={"prompt": tags.prompt})
    return GenerationLine(settings=settings, loras=tags.loras, flags=frozenset(line_flags(line)))
