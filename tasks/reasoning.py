"""The `reasoning` queue: one chat completion on the local instruct model."""

from __future__ import annotations

from athena_client.contract.payloads import ReasoningResult, ReasonRequest
from athena_client.contract.routes import Queue, TaskName
from athena_inference.config.celery import app
from athena_inference.tasks import seams
from athena_inference.tasks.base import AthenaTask, task_timing
from athena_inference.tasks.generation import TaskGeneration


# track_started: the worker stores a STARTED state before the generation runs,
# so a caller can time the generation apart from its wait in the queue
# (athena_client.compat's LocalLLMClient does). One Redis write against seconds
# of generation; the fast tasks go without (config/celery.py).
@app.task(name=TaskName.REASON.value, base=AthenaTask, track_started=True)
def reason(request: ReasonRequest) -> ReasoningResult:
    """Prompt (and optional system message) to text, through the model's chat
    template; a caller can cancel it mid-answer, and read it as it comes (`stream`)."""
    messages = [{"role": "system", "content": request.system}] if request.system else []
    messages.append({"role": "user", "content": request.prompt})
    out = TaskGeneration(seams.llama(Queue.REASONING), stream=request.stream).chat(
        messages,
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=list(request.stop),
        response_format=(
            {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": request.json_schema}}
            if request.json_schema is not None
            else None
        ),
        grammar=request.grammar,
    )
    return ReasoningResult(
        text=out.text,
        finish_reason=out.finish_reason,
        model=out.model,
        timing=task_timing(out.model, out.timing),
    )
