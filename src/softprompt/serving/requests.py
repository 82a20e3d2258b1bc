"""The request bodies of the server's own routes (``/v1/classify``, ``/v1/generate``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from softprompt.serving.writing import Listener, WriteJob

MAX_SEED = 2**63 - 1  # what a torch.Generator takes


def encodable(text: str) -> str:
    """A text that UTF-8 can encode (a lone surrogate such as "\\ud800" cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode at character {exc.start} (a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(encodable)]


class ClassifyRequest(BaseModel):
    task: str = Field(min_length=1, description="a task name from GET /v1/tasks")
    texts: list[Annotated[Text, Field(min_length=1)]] = Field(
        min_length=1, description="at most serve --max-texts (256 by default)"
    )


class TaskSource(BaseModel):
    path: str = Field(min_length=1, description="an artifact directory on the server's machine")


class GenerateRequest(BaseModel):
    task: str | None = Field(None, description="a generate task from GET /v1/tasks; none: the plain model")
    prompt: Text = Field(min_length=1, description="the text (a generation task renders it with its template)")
    max_new_tokens: int | None = Field(
        None, ge=1, description="default: the task's (30 for the plain model); at most serve --max-new-tokens (512)"
    )
    temperature: float | None = Field(None, ge=0, description="0: greedy; default: the task's (plain model: 1)")
    top_p: float | None = Field(None, gt=0, le=1, description="default: the task's (plain model: 0.9)")
    samples: int = Field(1, ge=1, description="at most serve --max-samples (16 by default)")
    seed: int = Field(0, ge=0, le=MAX_SEED)

    def job(self, listener: Listener | None = None) -> WriteJob:
        return WriteJob(
            self.task, self.prompt, self.max_new_tokens, self.temperature, self.top_p, self.samples, self.seed, listener
        )
