"""How a task is served is the task's own declaration (TaskSpec.served_as, bare_prompt): the
server dispatches on it, never on a task's name or a model's class."""

import json

import pytest

from softprompt.errors import SoftpromptError
from softprompt.serving.registry import load_task, load_tasks
from softprompt.serving.writing import Writer
from softprompt.tasks import get_task, task_specs
from softprompt.tasks.classification.model import PromptedClassifier
from softprompt.tasks.registry import CLASSIFY, GENERATE


def test_every_task_declares_how_it_is_served():
    declared = {name: spec.served_as for name, spec in task_specs().items()}
    assert declared["classification"] == CLASSIFY
    assert declared["generation"] == declared["lm"] == GENERATE
    assert declared["ner"] is None and declared["multitask"] is None
    assert set(declared.values()) <= {CLASSIFY, GENERATE, None}


def test_the_server_loads_what_each_task_declares(served_tasks, tiny_backbone):
    tasks = load_tasks(served_tasks, tiny_backbone)
    assert isinstance(tasks.classifiers["sentiment"], PromptedClassifier)
    assert isinstance(tasks.writers["polite"], Writer)
    assert tasks.kind_of("sentiment") == CLASSIFY and tasks.kind_of("polite") == GENERATE


def test_a_task_that_declares_no_serving_is_refused_in_one_line(served_copy, tiny_backbone):
    record = served_copy / "sentiment" / "task.json"
    meta = json.loads(record.read_text())
    record.write_text(json.dumps({**meta, "task": "ner"}))
    with pytest.raises(SoftpromptError) as refused:
        load_task(served_copy / "sentiment", tiny_backbone)
    message = str(refused.value)
    assert "task=ner artifacts are not served" in message and "classification" in message and "\n" not in message
    assert get_task("ner").served_as is None
