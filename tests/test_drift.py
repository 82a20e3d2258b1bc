"""Watching for drift: an artifact records what it predicted on its dev split; a server compares
its traffic against that (PSI) in /metrics, with an alert past the threshold; `softprompt
monitor` plots a task's life from the capture store (tiny random Llama)."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from softprompt.cli import main
from softprompt.lifecycle.drift import Window, psi
from softprompt.serving.app import ServeSettings, Service, create_app
from softprompt.tasks.classification.metrics import prediction_profile

from .conftest import NEGATIVE, POSITIVE

DEV = POSITIVE + NEGATIVE  # the served classifier's dev split


def gauges(client) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(client.get("/metrics").text)
        for s in f.samples
        if s.name.startswith("softprompt_task_")
    }


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert 0 < psi([0.5, 0.5], [0.6, 0.4]) < psi([0.5, 0.5], [0.9, 0.1])
    assert psi([1.0, 0.0], [0.0, 1.0]) > 1  # an empty bin is floored, not infinite


def test_a_window_scores_against_its_reference_once_half_full():
    reference = prediction_profile([[0.85, 0.15], [0.2, 0.8]] * 10, ["a", "b"])
    assert reference["label_shares"] == pytest.approx({"a": 0.5, "b": 0.5})
    assert reference["confidence_bins"][8] == pytest.approx(1.0)  # 0.85 and 0.8 are both in [0.8, 0.9)
    window = Window(["a", "b"], reference, size=10)
    window.observe("a", 0.85)
    assert window.score() is None  # too few answers to say
    for _ in range(4):
        window.observe("b", 0.85)
    assert window.score() == pytest.approx(psi([0.5, 0.5], [0.2, 0.8]))
    for _ in range(10):
        window.observe("a", 0.55)  # less sure, one label only: far from the reference
    assert window.score() > 1 and len(window.answers) == 10


def test_the_artifact_records_its_dev_predictions(served_tasks):
    meta = json.loads((served_tasks / "sentiment" / "task.json").read_text())
    predicted = meta["metrics"]["dev"]["predicted"]
    assert predicted["n"] == len(DEV) and sum(predicted["confidence_bins"]) == pytest.approx(1)
    assert set(predicted["label_shares"]) == {"positive", "negative"}


@pytest.mark.slow
def test_the_server_alerts_on_traffic_unlike_the_reference_and_not_before(served_tasks, tiny_backbone, tmp_path):
    """Traffic like the dev split scores about 0; the same traffic against a reference unlike it
    (a copy of the artifact that recorded other dev predictions: the tiny random model answers
    every text alike, so the shift is made on the reference's side) raises the alert."""
    served = tmp_path / "served"
    shutil.copytree(served_tasks, served)
    shutil.copytree(served / "sentiment", served / "shifted")
    meta = json.loads((served / "shifted" / "task.json").read_text())
    labels = meta["labels"]
    predicted = meta["metrics"]["dev"]["predicted"]
    opposite = {label: 1.0 - share for label, share in predicted["label_shares"].items()}
    predicted.update(label_shares=opposite, confidence_bins=[0.0] * 5 + [1.0] + [0.0] * 4)
    (served / "shifted" / "task.json").write_text(json.dumps(meta))
    db = tmp_path / "capture.db"
    settings = ServeSettings(max_wait_ms=1, drift_window=len(DEV), drift_threshold=0.25, capture=str(db))
    service = Service(tiny_backbone, served)
    with TestClient(create_app(service, settings)) as client:
        half = [client.post("/v1/classify", json={"task": "sentiment", "texts": [t]}).json() for t in DEV[:4]]
        too_few = gauges(client)
        answers = half + [client.post("/v1/classify", json={"task": "sentiment", "texts": [t]}).json() for t in DEV[4:]]
        for text in DEV:
            client.post("/v1/classify", json={"task": "shifted", "texts": [text]})
        client.post("/v1/feedback", json={"id": answers[0]["id"], "label": answers[0]["results"][0]["label"]})
        client.post(
            "/v1/feedback",
            json={"id": answers[1]["id"], "label": next(x for x in labels if x != answers[1]["results"][0]["label"])},
        )
        seen = gauges(client)
    task, shifted = (("task", "sentiment"),), (("task", "shifted"),)
    assert ("softprompt_task_drift", task) not in too_few  # under half a window: no score yet
    assert seen[("softprompt_task_drift", task)] < 0.05  # the dev texts themselves
    assert seen[("softprompt_task_drift_alert", task)] == 0
    assert seen[("softprompt_task_drift", shifted)] >= 0.25 and seen[("softprompt_task_drift_alert", shifted)] == 1
    assert sum(
        v
        for (name, key), v in seen.items()
        if name == "softprompt_task_label_share" and key[1] == ("task", "sentiment")
    ) == pytest.approx(1)
    assert 0 < seen[("softprompt_task_confidence", task)] <= 1
    assert seen[("softprompt_task_feedback_accuracy", task)] == 0.5
    out = tmp_path / "life.png"
    assert main(["monitor", "--db", str(db), "--task", "sentiment", "--out", str(out), "--periods", "2"]) == 0
    assert main(["monitor", "--db", str(db), "--task", "sentiment", "--out", str(out), "--artifacts", str(served_tasks),
                 "--periods", "1", "--json"]) == 0  # fmt: skip
    data = json.loads(out.with_suffix(".json").read_text())
    (series,) = data["versions"].values()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert series[0]["requests"] == len(DEV) and series[0]["feedback_accuracy"] == 0.5
    assert series[0]["drift"] is None  # fewer answers than a period needs for a drift score
    assert main(["monitor", "--db", str(db), "--task", "nope", "--out", str(out)]) == 2
