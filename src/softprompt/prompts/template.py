"""Template syntax, rendering and tokenization.

A template is text with slots::

    "{soft:10} Review: {text}\nSentiment:{soft:4}"

- ``{name}``: an example field (``{text}`` is the input; other names are data columns);
- ``{soft:N}`` (or ``{soft}`` = 1): N trainable soft tokens, anywhere in the text;
- ``{mask}``: where an encoder predicts the label (default: its first token, e.g. [CLS]);
- ``{{`` and ``}}``: literal braces.

For a causal LM the label is predicted right after the rendered template. Adjacent literal text
and fields are tokenized as one string (so word pieces merge as in natural text); soft slots and
the mask break it into chunks.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from softprompt.errors import SoftpromptError

SLOT = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]*))?\}")
NO_SOFT = -1  # soft index of a real token


@dataclass(frozen=True)
class Segment:
    """A piece of a template: literal ``text``, a ``field``, ``soft`` tokens or the ``mask``."""

    kind: str
    value: str = ""
    length: int = 0


@dataclass
class EncodedInput:
    """A tokenized example: ids, which positions are soft tokens (their index, else -1)."""

    ids: list[int]
    soft: list[int]
    mask_position: int | None = None
    shortened: bool = False  # a field was cut to fit max_length


class Template:
    """A parsed template; see the module docstring for the syntax."""

    def __init__(self, source: str):
        self.source = source
        self.segments = self._parse(source)
        self.fields = [s.value for s in self.segments if s.kind == "field"]
        self.num_soft = sum(s.length for s in self.segments if s.kind == "soft")
        first = self.segments[0] if self.segments else None
        self.leading_soft = first.length if first is not None and first.kind == "soft" else 0
        self.has_mask = any(s.kind == "mask" for s in self.segments)
        if not self.fields:
            raise SoftpromptError(f"template {source!r} has no input field; add {{text}}")

    @staticmethod
    def _parse(source: str) -> list[Segment]:
        segments: list[Segment] = []
        literal, pos = [], 0
        for match in SLOT.finditer(source):
            literal.append(_literal(source, source[pos : match.start()]))
            pos = match.end()
            token = match.group(0)
            if token in ("{{", "}}"):
                literal.append(token[0])
                continue
            if "".join(literal):
                segments.append(Segment("text", "".join(literal)))
            literal = []
            name, number = match.group(1), match.group(2)
            if name == "soft":
                length = 1 if number is None else int(number) if re.fullmatch(r"[0-9]+", number.strip()) else 0
                if length < 1:
                    raise SoftpromptError(
                        f"template {source!r}: {token} needs a whole number of soft tokens >= 1 (e.g. {{soft:4}})"
                    )
                segments.append(Segment("soft", length=length))
            elif number is not None:
                raise SoftpromptError(f"template {source!r}: only soft slots take a count, not {token}")
            elif name == "mask":
                segments.append(Segment("mask"))
            else:
                segments.append(Segment("field", name))
        literal.append(_literal(source, source[pos:]))
        rest = "".join(literal)
        if rest:
            segments.append(Segment("text", rest))
        return segments

    def check_fields(self, available: set[str], where: str) -> None:
        """Raise if the template names a field the data does not have."""
        for name in self.fields:
            if name not in available:
                raise SoftpromptError(
                    f"template field {{{name}}} is not in {where} (fields: {', '.join(sorted(available))})"
                )

    def with_prefix(self, length: int) -> Template:
        """This template with ``{soft:length}`` in front (used when it has no soft slot)."""
        escaped = self.source.replace("{{", "\0").replace("}}", "\1")
        return Template(f"{{soft:{length}}}" + escaped.replace("\0", "{{").replace("\1", "}}"))

    def without_soft(self) -> Template:
        """The same template with its soft slots removed (for zero-shot comparisons)."""
        return Template(SLOT.sub(lambda m: "" if m.group(1) == "soft" else m.group(0), self.source))

    def render(self, fields: dict[str, str]) -> str:
        """Render as plain text (soft tokens shown as ``<soft>``)."""
        parts = []
        for seg in self.segments:
            if seg.kind == "text":
                parts.append(seg.value)
            elif seg.kind == "field":
                parts.append(fields[seg.value])
            elif seg.kind == "soft":
                parts.append("<soft>" * seg.length)
        return "".join(parts)

    def ends_with_space(self) -> bool:
        last = self.segments[-1]
        return last.kind == "text" and last.value[-1:].isspace()

    def encode(
        self,
        fields: dict[str, str],
        tokenizer: PreTrainedTokenizerBase,
        causal: bool,
        max_length: int,
        demonstrations: str = "",
        setting: int | None = None,
    ) -> EncodedInput:
        """Tokenize one example; the longest field is shortened when the result exceeds max_length.

        Args:
            fields: the example's fields.
            tokenizer: the backbone's tokenizer.
            causal: causal LM layout (leading soft block first, no trailing specials) or encoder
                layout ([CLS] ... [SEP], label at ``{mask}`` or [CLS]).
            max_length: the longest allowed encoding.
            demonstrations: few-shot text put before the first literal/field chunk.
            setting: the train.max_length the user set, when ``max_length`` is the share of it
                left for the template (a generation target takes the rest); errors name it.
        """
        fields = dict(fields)
        # Cutting a field by the overflow's count of its own tokens is nearly always enough, but
        # not always (tokens merge differently at the cut), so a few tries, then a clear error.
        for attempt in range(4):
            encoded = self._encode_once(fields, tokenizer, causal, demonstrations)
            overflow = len(encoded.ids) - max_length
            if overflow <= 0:
                encoded.shortened = attempt > 0
                return encoded
            if not self._shorten_longest_field(fields, tokenizer, overflow):
                break
        share = "" if setting is None or setting == max_length else f" ({max_length} left after the target)"
        raise SoftpromptError(
            f"template {self.source!r} does not fit in train.max_length={setting or max_length} tokens{share} "
            "even with its fields shortened; raise train.max_length"
        )

    def _shorten_longest_field(self, fields: dict[str, str], tokenizer: PreTrainedTokenizerBase, overflow: int) -> bool:
        """Cut the longest field by ``overflow`` tokens (and one more: the cut may merge); False
        when it is too short to absorb the overflow."""
        longest = max(self.fields, key=lambda name: len(fields[name]))
        ids = tokenizer(fields[longest], add_special_tokens=False)["input_ids"]
        if len(ids) <= overflow:
            return False
        fields[longest] = tokenizer.decode(ids[: len(ids) - overflow - 1])
        return True

    def _encode_once(
        self, fields: dict[str, str], tokenizer: PreTrainedTokenizerBase, causal: bool, demonstrations: str
    ) -> EncodedInput:
        """The template with these fields as token ids, in the causal or the encoder layout."""
        lead, tail = special_affixes(tokenizer)
        out = _Encoding(pad=tokenizer.pad_token_id or 0)
        segments = list(self.segments)
        if causal and self.leading_soft:
            # peft's PROMPT_TUNING layout: the prompt comes before everything, BOS included.
            out.add_soft(self.leading_soft)
            segments = segments[1:]
        out.add_tokens(lead)
        for piece in _chunks(segments, fields):
            if isinstance(piece, str):
                # The few-shot demonstrations go before the first text the template writes.
                piece, demonstrations = (demonstrations + piece, "") if piece else (piece, demonstrations)
                out.add_tokens(tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else [])
            elif piece.kind == "soft":
                out.add_soft(piece.length)
            elif causal:
                raise SoftpromptError(
                    "{mask} is for encoders; a causal LM predicts the label at the end of the template"
                )
            else:
                out.add_mask(tokenizer.mask_token_id if tokenizer.mask_token_id is not None else out.pad)
        if causal:
            return EncodedInput(out.ids, out.soft, out.mask_position)
        out.add_tokens(tail)
        return EncodedInput(out.ids, out.soft, 0 if out.mask_position is None else out.mask_position)  # 0: [CLS]


@dataclass
class _Encoding:
    """Token ids being written, with each position's soft index (``NO_SOFT`` for a real token)."""

    pad: int  # the id that holds a soft token's place (its embedding is replaced)
    ids: list[int] = field(default_factory=list)
    soft: list[int] = field(default_factory=list)
    next_soft: int = 0
    mask_position: int | None = None

    def add_tokens(self, ids: list[int] | tuple[int, ...]) -> None:
        self.ids.extend(ids)
        self.soft.extend([NO_SOFT] * len(ids))

    def add_soft(self, length: int) -> None:
        self.ids.extend([self.pad] * length)
        self.soft.extend(range(self.next_soft, self.next_soft + length))
        self.next_soft += length

    def add_mask(self, token: int) -> None:
        self.mask_position = len(self.ids)
        self.add_tokens([token])


def _chunks(segments: list[Segment], fields: dict[str, str]) -> Iterator[str | Segment]:
    """The segments with each run of literal text and fields joined into one string (tokenized
    together, as natural text), and the soft and mask segments between them as they are."""
    text: list[str] = []
    for seg in segments:
        if seg.kind in ("text", "field"):
            text.append(seg.value if seg.kind == "text" else fields[seg.value])
        else:
            yield "".join(text)
            text = []
            yield seg
    yield "".join(text)


def _literal(source: str, text: str) -> str:
    """Literal text between slots, which must hold no lone brace (a mistyped slot would stay text)."""
    if "{" in text or "}" in text:
        raise SoftpromptError(f"template {source!r}: unbalanced brace; write {{{{ or }}}} for a literal one")
    return text


_AFFIXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def special_affixes(tokenizer: PreTrainedTokenizerBase) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The special tokens the tokenizer puts before and after a text (e.g. BOS, or [CLS]/[SEP])."""
    if tokenizer not in _AFFIXES:
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        found: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                found = (tuple(full[:start]), tuple(full[start + len(plain) :]))
                break
        _AFFIXES[tokenizer] = found
    return _AFFIXES[tokenizer]
