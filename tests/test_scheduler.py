"""The engine's scheduler on its own, and its loop, with a fake executor (no model): admission,
budgets, fairness, cancellation, as vLLM tests its scheduler."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from softprompt.serving.engine import Engine
from softprompt.serving.scheduler import Scheduler
from softprompt.serving.step import Outcome, Plan, QueueFull, Status

from .helpers import async_wait_until


class FakeExecutor:
    """Runs plans without a model. A one-shot request's int payload is answered times 10; a
    generation request's payload is ``(prompt tokens, tokens to generate)``."""

    def __init__(self, delay: float = 0.0):
        self.plans: list[Plan] = []
        self.read: dict[int, int] = {}  # prompt tokens read, by request id
        self.left: dict[int, int] = {}  # tokens still to generate, by decoding request id
        self.delay = delay

    def run(self, plan: Plan) -> Outcome:
        self.plans.append(plan)
        time.sleep(self.delay)
        out = Outcome()
        for request in plan.drop:
            self.left.pop(request.id, None)
        for request in plan.batch:
            out.results[request.id] = request.payload * 10 if isinstance(request.payload, int) else request.payload
        budget = plan.prefill_budget
        for request, tokens in plan.prefill:
            length, new = request.payload
            before = self.read.get(request.id, 0)
            read = min(tokens, length - before, budget)
            budget -= read
            self.read[request.id] = before + read
            out.read[request.id] = (read, length)
            if before + read == length:
                self.left[request.id] = new
        out.decoded_steps = 0
        for _ in range(plan.decode_steps):
            if not self.left:  # every row finished: the slice ends early, as the running batch's does
                break
            out.decoded_steps += 1
            for key in list(self.left):
                self.left[key] -= 1
                if not self.left[key]:
                    del self.left[key]
                    out.results[key] = "done"
        return out


class TimedExecutor(FakeExecutor):
    """Reports how long its prompt reading and decoding took, at the given speeds."""

    def __init__(self, seconds_per_token: float, seconds_per_step: float):
        super().__init__()
        self.seconds_per_token, self.seconds_per_step = seconds_per_token, seconds_per_step
        self.seconds_per_batch = 0.0

    def run(self, plan: Plan) -> Outcome:
        out = super().run(plan)
        read = sum(read for read, _ in out.read.values())  # a forward pass (a step's cost), then the tokens
        out.prefill_seconds = (self.seconds_per_step + self.seconds_per_token * read) if read else 0.0
        out.decode_seconds = self.seconds_per_step * out.decoded_steps
        out.batch_seconds = self.seconds_per_batch if plan.batch else 0.0
        return out


def drive(scheduler: Scheduler, executor: FakeExecutor, now: float = 0.0, limit: int = 1000) -> dict[int, object]:
    """Run plans until nothing is left (time jumps to the end of any wait); answers by id."""
    answers = {}
    for _ in range(limit):
        if scheduler.idle():
            return answers
        plan = scheduler.schedule(now)
        if plan.empty:
            assert plan.wait is not None and plan.wait > 0, "an empty plan with requests left must say how long to wait"
            now += plan.wait
            continue
        answers.update((r.id, r.result) for r in scheduler.update(plan, executor.run(plan)))
    raise AssertionError("the scheduler did not finish")


# ---- one-shot batches -------------------------------------------------------------------------


def test_requests_of_one_kind_share_a_batch_up_to_max_batch_rows():
    scheduler, executor = Scheduler(max_batch=4, max_wait=0), FakeExecutor()
    ids = [scheduler.add("c", i, rows=1).id for i in range(3)]
    scores = scheduler.add("s", 7).id  # another kind: the next batch
    ids += [scheduler.add("c", i, rows=1).id for i in range(3, 6)]
    answers = drive(scheduler, executor)
    assert [len(p.batch) for p in executor.plans] == [4, 1, 2]
    assert {r.kind for r in executor.plans[0].batch} == {"c"}
    assert [r.kind for r in executor.plans[1].batch] == ["s"]  # then the oldest waiting one's kind
    assert [answers[i] for i in ids] == [i * 10 for i in range(6)] and answers[scores] == 70


def test_a_lone_batch_waits_for_company_until_max_wait_after_its_arrival():
    scheduler = Scheduler(max_batch=8, max_wait=0.05)
    scheduler.add("c", 1, now=10.0)
    plan = scheduler.schedule(10.01)
    assert plan.empty and plan.wait == pytest.approx(0.04)
    scheduler.add("c", 2, now=10.03)
    assert scheduler.schedule(10.04).empty  # still waiting for company
    plan = scheduler.schedule(10.05)
    assert [r.payload for r in plan.batch] == [1, 2] and all(r.status is Status.RUNNING for r in plan.batch)


def test_a_full_batch_does_not_wait():
    scheduler = Scheduler(max_batch=2, max_wait=10)
    for i in range(3):
        scheduler.add("c", i, now=0.0)
    assert [r.payload for r in scheduler.schedule(0.0).batch] == [0, 1]


def test_urgent_requests_go_first_one_kind_at_a_time_in_their_order():
    scheduler, executor = Scheduler(urgent={"t", "v"}, max_batch=8, max_wait=0), FakeExecutor()
    for i in range(3):
        scheduler.add("c", i)
    scheduler.add("t", "add a")
    scheduler.add("v", "promote a")
    scheduler.add("t", "remove b")
    drive(scheduler, executor)
    assert [[r.payload for r in p.batch] for p in executor.plans] == [
        ["add a"],
        ["promote a"],
        ["remove b"],
        [0, 1, 2],
    ]


def test_a_full_queue_refuses_and_a_cancelled_waiting_request_frees_its_place():
    scheduler = Scheduler(queue_size=2)
    first = scheduler.add("c", 1)
    scheduler.add("c", 2)
    with pytest.raises(QueueFull):
        scheduler.add("c", 3)
    scheduler.cancel(first.id)
    assert first.status is Status.CANCELLED and first.id not in scheduler.requests
    scheduler.add("c", 3)
    assert [r.payload for r in scheduler.schedule(1.0).batch] == [2, 3]


# ---- generation: admission, budgets, slices -----------------------------------------------------


def test_generation_is_admitted_while_its_rows_fit_first_come_first_served():
    scheduler, executor = Scheduler(continuous={"g"}, max_batch=4, max_wait=0), FakeExecutor()
    big = scheduler.add("g", (3, 5), rows=3)
    two = scheduler.add("g", (3, 2), rows=2)  # does not fit beside big
    one = scheduler.add("g", (3, 2), rows=1)  # would fit, but does not pass the one before it
    plan = scheduler.schedule(0.0)
    assert [r.id for r, _ in plan.prefill] == [big.id]
    assert big.status is Status.PREFILLING and two.status is one.status is Status.WAITING
    scheduler.update(plan, executor.run(plan))
    assert big.status is Status.DECODING
    answers = drive(scheduler, executor)
    assert answers == {big.id: "done", two.id: "done", one.id: "done"}
    admitted = [[r.id for r, _ in p.prefill] for p in executor.plans if p.prefill]
    assert admitted == [[big.id], [two.id, one.id]]


def test_a_request_larger_than_max_batch_runs_alone():
    scheduler, executor = Scheduler(continuous={"g"}, max_batch=2, max_wait=0), FakeExecutor()
    huge = scheduler.add("g", (2, 3), rows=5)
    small = scheduler.add("g", (2, 1), rows=1)
    plan = scheduler.schedule(0.0)
    assert [r.id for r, _ in plan.prefill] == [huge.id]
    scheduler.update(plan, executor.run(plan))
    assert drive(scheduler, executor) == {huge.id: "done", small.id: "done"}


def test_a_long_prompt_is_read_in_chunks_under_the_token_budget_while_rows_keep_decoding():
    scheduler, executor = Scheduler(continuous={"g"}, max_batch=16, token_budget=64, max_wait=0), FakeExecutor()
    decoding = [scheduler.add("g", (5, 200), rows=1) for _ in range(8)]
    plan = scheduler.schedule(0.0)
    scheduler.update(plan, executor.run(plan))
    assert all(r.status is Status.DECODING for r in decoding)
    long = scheduler.add("g", (1000, 3), rows=1)
    chunks = []
    while long.status is not Status.DECODING:
        plan = scheduler.schedule(0.0)
        assert plan.decode_steps >= 1  # the decoding rows get a token at every step
        chunk = dict((r.id, tokens) for r, tokens in plan.prefill)[long.id]
        assert chunk + scheduler.decoding_rows <= 64  # one token per decoding row, the rest for the prompt
        chunks.append(chunk)
        scheduler.update(plan, executor.run(plan))
    assert sum(chunks) == 1000 and len(chunks) == 18  # 56 tokens a step: 17 full chunks and the rest
    assert long.prompt_tokens == 1000 and long.prefilled == 1000


def test_chunks_are_sized_to_the_decoding_rows_wait_at_the_measured_speeds():
    scheduler = Scheduler(continuous={"g"}, max_batch=16, token_budget=512, max_wait=0, max_token_wait=0.5)
    executor = TimedExecutor(seconds_per_token=0.01, seconds_per_step=0.1)
    decoding = scheduler.add("g", (5, 500))
    plan = scheduler.schedule(0.0)
    scheduler.update(plan, executor.run(plan))
    assert decoding.status is Status.DECODING and scheduler.seconds_per_prompt_token is None  # 5 tokens: no rate
    long = scheduler.add("g", (1000, 2))
    plan = scheduler.schedule(0.0)
    assert plan.prefill_budget == 64  # no speed known yet: a first chunk of 64 tokens
    scheduler.update(plan, executor.run(plan))
    assert scheduler.seconds_per_prompt_token == pytest.approx(0.01)  # 0.74 s, less a forward pass's 0.1 s
    plan = scheduler.schedule(0.0)
    assert plan.prefill_budget == 30  # (0.5 s - the chunk's forward pass and the step, 0.1 s each) / 0.01 s
    executor.seconds_per_token = 0.05  # slower now (later chunks attend to more)
    scheduler.update(plan, executor.run(plan))
    assert scheduler.schedule(0.0).prefill_budget == 16  # 0.3 / 0.05: 6, raised to 16 tokens
    assert long.status is Status.PREFILLING


def test_short_prompts_arriving_together_are_read_in_one_step_not_one_per_step():
    """A handful of tokens costs a forward pass whatever their number: such a read sets no rate
    per token (divided among 4 tokens, 0.12 s read as 0.03 s a token, a budget of one prompt)."""
    scheduler = Scheduler(continuous={"g"}, max_batch=16, token_budget=512, max_wait=0, max_token_wait=0.5)
    executor = TimedExecutor(seconds_per_token=0.005, seconds_per_step=0.1)
    scheduler.add("g", (100, 500))  # 100 tokens: 0.6 s, 0.005 s a token over the forward pass
    plan = scheduler.schedule(0.0)
    scheduler.update(plan, executor.run(plan))
    scheduler.add("g", (4, 500))
    plan = scheduler.schedule(0.0)
    scheduler.update(plan, executor.run(plan))
    assert scheduler.seconds_per_prompt_token == pytest.approx(0.005)  # the 4-token read changed nothing
    short = [scheduler.add("g", (10, 8)) for _ in range(4)]
    plan = scheduler.schedule(0.0)
    scheduler.update(plan, executor.run(plan))
    assert all(r.status is Status.DECODING for r in short)  # 40 tokens in a budget of 60


def test_without_decoding_rows_a_prompt_reads_the_whole_budget():
    scheduler = Scheduler(continuous={"g"}, token_budget=300, max_token_wait=0.5, max_wait=0)
    scheduler.seconds_per_prompt_token = 1.0  # slow, but no row waits
    scheduler.add("g", (1000, 2))
    assert scheduler.schedule(0.0).prefill_budget == 300


def test_prompts_share_the_budget_in_arrival_order():
    scheduler, executor = Scheduler(continuous={"g"}, max_batch=16, token_budget=10, max_wait=0), FakeExecutor()
    first, second = scheduler.add("g", (6, 5)), scheduler.add("g", (6, 5))
    plan = scheduler.schedule(0.0)
    # lengths not known yet: each may read the whole budget, the executor stops at the total
    assert [(r.id, tokens) for r, tokens in plan.prefill] == [(first.id, 10), (second.id, 10)]
    assert plan.prefill_budget == 10
    scheduler.update(plan, executor.run(plan))
    assert first.status is Status.DECODING and second.status is Status.PREFILLING and second.prefilled == 4
    plan = scheduler.schedule(0.0)  # now known: the rest of the second, beside one decoding row
    assert [(r.id, tokens) for r, tokens in plan.prefill] == [(second.id, 2)] and plan.prefill_budget == 9


def test_decoding_advances_one_token_alone_and_busy_slice_tokens_beside_other_work():
    scheduler = Scheduler(continuous={"g"}, max_batch=8, busy_slice=4, max_wait=0)
    executor = FakeExecutor()
    scheduler.add("g", (2, 40))
    plan = scheduler.schedule(0.0)
    scheduler.update(plan, executor.run(plan))
    assert scheduler.schedule(0.0).decode_steps == 1
    scheduler.add("c", 1)
    plan = scheduler.schedule(0.0)
    assert [r.payload for r in plan.batch] == [1] and plan.decode_steps == 4  # beside a batch
    scheduler.update(plan, executor.run(plan))
    assert scheduler.schedule(0.0).decode_steps == 1  # alone again


def decoding_beside_a_batch() -> tuple[Scheduler, TimedExecutor]:
    """A scheduler that ran one step: a generation request and a classification batch that took
    1 s, beside a decoding step of 0.05 s."""
    scheduler = Scheduler(continuous={"g"}, max_batch=8, busy_slice=4, max_wait=0)
    executor = TimedExecutor(seconds_per_token=0.001, seconds_per_step=0.05)
    executor.seconds_per_batch = 1.0
    scheduler.add("g", (2, 1000))
    scheduler.add("c", 1)
    plan = scheduler.schedule(0.0)
    scheduler.update(plan, executor.run(plan))
    return scheduler, executor


def test_under_both_loads_decoding_gets_half_as_long_as_the_last_batch_took():
    scheduler, executor = decoding_beside_a_batch()  # the batch took 1 s, a decoding step 0.05 s
    scheduler.add("c", 2)
    scheduler.add("s", 3)
    assert scheduler.schedule(0.0).decode_steps == 10  # 0.5 s of decoding while the next batch waits
    executor.seconds_per_batch = 0.01
    plan = scheduler.schedule(0.0)
    scheduler.update(plan, executor.run(plan))
    scheduler.add("c", 4)
    scheduler.add("s", 5)  # still waits after the next plan takes the "c" one
    assert scheduler.schedule(0.0).decode_steps == 4  # a quick batch: busy_slice, no fewer


def test_a_slice_whose_rows_finished_early_is_measured_per_step_it_decoded():
    scheduler, executor = decoding_beside_a_batch()
    executor.left = {key: 3 for key in executor.left}  # the row is 3 tokens from its end
    scheduler.add("c", 2)
    plan = scheduler.schedule(0.0)
    assert plan.decode_steps == 10
    outcome = executor.run(plan)
    assert outcome.decoded_steps == 3
    scheduler.update(plan, outcome)
    # 0.15 s for 3 steps: 0.05 s each (over the 10 planned, 0.015 s, and the next slice 33 steps)
    assert scheduler.seconds_per_decode_step == pytest.approx(0.05)


def test_classification_is_not_starved_by_a_long_generation():
    scheduler, executor = Scheduler(continuous={"g"}, max_batch=8, max_wait=0.5), FakeExecutor()
    scheduler.add("g", (2, 1000))
    classified = scheduler.add("c", 5)
    answers, plans = {}, 0
    while classified.id not in answers:
        plan = scheduler.schedule(0.0)  # time stands still: generation running means no waiting
        answers.update((r.id, r.result) for r in scheduler.update(plan, executor.run(plan)))
        plans += 1
    assert answers[classified.id] == 50 and plans == 1


# ---- cancellation and failure -----------------------------------------------------------------


def test_a_cancelled_running_request_is_dropped_at_the_next_step_and_never_planned_again():
    scheduler, executor = Scheduler(continuous={"g"}, max_batch=8, max_wait=0), FakeExecutor()
    gone, stays = scheduler.add("g", (2, 100)), scheduler.add("g", (2, 3))
    plan = scheduler.schedule(0.0)
    scheduler.update(plan, executor.run(plan))
    scheduler.cancel(gone.id)
    assert gone.status is Status.CANCELLED
    plan = scheduler.schedule(0.0)
    assert plan.drop == [gone] and gone.id not in scheduler.requests
    answers = {}
    answers.update((r.id, r.result) for r in scheduler.update(plan, executor.run(plan)))
    answers.update(drive(scheduler, executor))
    assert answers == {stays.id: "done"}
    assert all(gone not in p.drop for p in executor.plans[2:]) and gone.id not in executor.left


def test_a_generation_cancelled_as_it_finishes_is_still_dropped_once():
    scheduler, executor = Scheduler(continuous={"g"}, max_wait=0), FakeExecutor()
    ending = scheduler.add("g", (2, 2))
    plan = scheduler.schedule(0.0)
    scheduler.update(plan, executor.run(plan))  # read, one token decoded
    plan = scheduler.schedule(0.0)  # its last token
    scheduler.cancel(ending.id)  # its caller went away while that step ran
    assert scheduler.update(plan, executor.run(plan)) == []  # answered to no one
    assert scheduler.schedule(0.0).drop == [ending] and scheduler.idle()


def test_a_cancelled_prefilling_request_stops_reading():
    scheduler, executor = Scheduler(continuous={"g"}, token_budget=8, max_wait=0), FakeExecutor()
    long = scheduler.add("g", (100, 1))
    plan = scheduler.schedule(0.0)
    scheduler.update(plan, executor.run(plan))
    scheduler.cancel(long.id)
    plan = scheduler.schedule(0.0)
    assert plan.drop == [long] and not plan.prefill and scheduler.idle()


def test_a_one_shot_request_cancelled_while_its_batch_runs_is_answered_to_no_one():
    scheduler, executor = Scheduler(max_wait=0), FakeExecutor()
    running, other = scheduler.add("c", 1), scheduler.add("c", 2)
    plan = scheduler.schedule(0.0)
    assert running.status is other.status is Status.RUNNING
    scheduler.cancel(running.id)  # its caller timed out while the batch ran
    answered = scheduler.update(plan, executor.run(plan))
    assert {r.id: r.result for r in answered} == {other.id: 20} and running.status is Status.CANCELLED
    assert scheduler.idle()


def test_a_failed_step_answers_its_own_requests_and_the_scheduler_goes_on():
    scheduler, executor = Scheduler(continuous={"g"}, max_batch=8, max_wait=0), FakeExecutor()
    running = scheduler.add("g", (2, 50))
    plan = scheduler.schedule(0.0)
    scheduler.update(plan, executor.run(plan))
    batch = scheduler.add("c", 1)
    plan = scheduler.schedule(0.0)
    failed = scheduler.fail(plan, RuntimeError("boom"))
    assert {r.id for r in failed} == {running.id, batch.id}
    assert all(r.status is Status.FAILED and isinstance(r.result, RuntimeError) for r in failed)
    assert scheduler.idle()
    later = scheduler.add("c", 2)
    assert drive(scheduler, executor) == {later.id: 20}


# ---- the loop: the asyncio side only enqueues, cancels and delivers ---------------------------


def test_requests_arriving_together_share_one_step():
    executor = FakeExecutor()

    async def scenario():
        engine = Engine(Scheduler(max_batch=8, max_wait=0.05), executor)
        engine.start()
        results = await asyncio.gather(*(engine.submit("c", i) for i in range(5)))
        await engine.stop()
        return results

    assert asyncio.run(scenario()) == [0, 10, 20, 30, 40]
    assert [[r.payload for r in p.batch] for p in executor.plans] == [[0, 1, 2, 3, 4]]


def test_a_caller_that_goes_away_cancels_its_generation_and_the_others_are_answered():
    executor = FakeExecutor(delay=0.002)

    async def scenario():
        engine = Engine(Scheduler(continuous={"g"}, max_batch=8, max_wait=0), executor)
        engine.start()
        gone = asyncio.ensure_future(engine.submit("g", (2, 10_000)))
        await async_wait_until(lambda: executor.left, "the generation to decode")
        stays = asyncio.ensure_future(engine.submit("g", (2, 20)))
        gone.cancel()
        answer = await stays
        await engine.stop()
        return answer

    assert asyncio.run(scenario()) == "done"
    assert any(p.drop for p in executor.plans) and not executor.left


def test_the_loop_refuses_when_full_and_recovers():
    held, release = threading.Event(), threading.Event()

    class Holding(FakeExecutor):
        def run(self, plan):
            held.set()
            release.wait(5)
            return super().run(plan)

    async def scenario():
        engine = Engine(Scheduler(max_batch=1, max_wait=0, queue_size=1), Holding())
        engine.start()
        first = asyncio.ensure_future(engine.submit("c", 1))
        await async_wait_until(held.is_set, "the executor to hold the first request")
        second = asyncio.ensure_future(engine.submit("c", 2))
        await async_wait_until(lambda: engine.scheduler.waiting_count == 1, "the second to wait")
        with pytest.raises(QueueFull):
            await engine.submit("c", 3)
        release.set()
        done = [await first, await second, await engine.submit("c", 4)]
        await engine.stop()
        return done

    assert asyncio.run(scenario()) == [10, 20, 40]
