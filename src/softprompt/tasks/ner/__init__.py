"""Named-entity recognition: CoNLL files, an encoder with a tag head, entity-level F1. The
windows and batches are :mod:`softprompt.tasks.ner.batches`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from softprompt.backbones import Backbone
from softprompt.config import PromptConfig, RunConfig
from softprompt.data.conll import Sentence, read_conll, tag_set
from softprompt.data.splits import Records, Splits, assemble_splits
from softprompt.errors import SoftpromptError
from softprompt.methods import MethodContext, get_method
from softprompt.tasks.ner.batches import TaggingTask, entities, split_words
from softprompt.tasks.ner.model import TokenTagger
from softprompt.tasks.ner.report import ner_report
from softprompt.tasks.registry import TaskSpec, register_task


def build_tagger(
    backbone: Backbone,
    method_name: str,
    tags: list[str],
    prompt: PromptConfig,
    seed: int = 0,
    max_length: int = 256,
    method_options: Any = None,
    for_inference: bool = False,
) -> TokenTagger:
    """A :class:`TokenTagger` for this encoder, method and tag set.

    Soft-token methods put ``prompt.length`` soft tokens after ``[CLS]``. The window is
    ``max_length`` tokens, less what position embeddings the method's prefixes take.
    """
    if backbone.predicts_tokens:
        raise SoftpromptError(
            f"task=ner needs an encoder backbone (e.g. backbone=minilm-l6); {backbone.name} is {backbone.kind}"
        )
    spec = get_method(method_name)
    if not spec.trains:
        raise SoftpromptError("task=ner needs a trained tag head: choose a method other than 'none'")
    num_soft = prompt.length if spec.uses_soft_tokens else 0
    kinds = sorted({tag[2:].lower() for tag in tags if tag != "O"})
    method = spec.build(MethodContext(backbone, num_soft, kinds, prompt, method_options, seed, for_inference))
    positions = getattr(backbone.model.config, "max_position_embeddings", None) or max_length
    window = min(max_length, positions - method.prefix_length())
    task = TaggingTask(backbone.tokenizer, tags, num_soft, window)
    return TokenTagger(backbone, method, task, seed=seed)


def sentences_from_records(records: Iterable[Mapping[str, Any]], source: str) -> list[Sentence]:
    """Tagged sentences from in-memory records ``{"tokens": [...], "tags": [...]}``."""
    sentences = []
    for number, record in enumerate(records, start=1):
        tokens, tags = record.get("tokens"), record.get("tags")
        if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
            raise SoftpromptError(f"{source} item {number}: expected 'tokens' and 'tags', two lists of the same length")
        sentences.append(Sentence([str(t) for t in tokens], [str(t) for t in tags]))
    if not sentences:
        raise SoftpromptError(f"{source} is empty")
    return sentences


@register_task("ner", "tag entities in CoNLL data with an encoder (entity-level F1)")
class NamedEntities(TaskSpec):
    metric = "f1"
    metric_label = "entity F1"
    predict_command = "tag"
    record_fields: ClassVar[dict[str, type]] = {"tags": list}
    prompt_baselines = False
    report_columns = (("f1", "entity F1", "{:.1%}"),)

    def load_splits(self, config: RunConfig, records: dict[str, Records] | None = None) -> Splits:
        data = config.data
        if records:
            source = {name: f"{name}_data (in memory)" for name in records}

            def read(name: str) -> tuple[list[Sentence], list[str]]:
                return sentences_from_records(records[name], f"{name}_data"), []

            return assemble_splits(config, read, source)
        if not data.train:
            raise SoftpromptError(
                "task=ner needs data.train=PATH: a CoNLL file ('token TAG' per line, blank between sentences)"
            )

        def read_file(name: str) -> tuple[list[Sentence], list[str]]:
            return read_conll(getattr(data, name)), []

        source = {"train": data.train, "dev": data.dev, "test": data.test, "format": "conll"}
        return assemble_splits(config, read_file, source)

    def from_records(self, records: Records, source: str, meta: dict[str, Any]) -> list[Sentence]:
        return sentences_from_records(records, source)

    def build(self, config: RunConfig, backbone: Backbone, splits: Splits) -> TokenTagger:
        return build_tagger(
            backbone,
            config.method,
            tag_set(splits.train),
            config.prompt,
            config.seed,
            config.train.max_length,
            config.method_options(),
        )

    def load(self, meta: dict[str, Any], config: RunConfig, backbone: Backbone) -> TokenTagger:
        return build_tagger(
            backbone,
            meta["method"],
            meta["tags"],
            config.prompt,
            0,
            meta["max_length"],
            config.method_options(meta["method"]),
            for_inference=True,
        )

    def read_eval_data(
        self, path: str, meta: dict[str, Any], model, fields: dict[str, str | None], key: str = "test"
    ) -> list:
        return read_conll(path)

    def summary(self, metrics: dict[str, Any], best_step: int, trained: bool, method: str) -> list[str]:
        dev = metrics["dev"]
        lines = [f"best dev entity F1: {100 * dev['f1']:.1f} at step {best_step} (n={dev['n']} sentences)"]
        if "test" in metrics:
            test = metrics["test"]
            lines.append(
                f"test entity F1: {100 * test['f1']:.1f} (precision {100 * test['precision']:.1f}, "
                f"recall {100 * test['recall']:.1f}; n={test['n']} sentences)"
            )
        return lines

    def report(self, metrics: dict[str, Any], where: str) -> str:
        return ner_report(metrics, where)

    def describe(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {"tags": meta["tags"]}

    def predict(self, model: TokenTagger, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """``{"text", "entities"}`` per text; words the tokenizer does not know are counted in
        ``unknown_words``."""
        spans = [split_words(text) for text in texts]
        sentences = [Sentence([word for word, _, _ in words], []) for words in spans]
        predicted = iter(model.predict([s for s in sentences if s.words], batch_size))
        results = []
        for text, words, sentence in zip(texts, spans, sentences, strict=True):
            found = entities(text, words, next(predicted)) if sentence.words else []
            unknown = model.task.word_pieces(sentence.words)[1] if sentence.words else 0
            results.append({"text": text, "entities": found, **({"unknown_words": unknown} if unknown else {})})
        return results
