"""Chat backends with tool use for the knowledge base's Q&A agent: one small provider-neutral
interface (`ChatBackend.chat`) and two implementations.

- `BedrockConverseBackend`: Amazon Bedrock's Converse API (``bedrock-runtime``), any model that
  supports tool use there.
- `OpenAICompatibleBackend`: any server speaking OpenAI's ``/chat/completions`` with ``tools``
  (llama.cpp's ``llama-server --jinja``, vLLM, Ollama's ``/v1``, OpenAI itself), standard library only.

`run_tool_loop` drives a backend: question → tool calls → tool results → … → the final answer.
`backend_from_settings` picks a backend from ``ENGAGEMENT_LLM_*`` variables (none by default: the
agent then answers from retrieval alone).

Neutral conventions: ``Reply.stop_reason`` uses Converse's words (``end_turn``, ``tool_use``,
``max_tokens``; anything else passes through); ``Reply.usage`` has ``input_tokens``,
``output_tokens`` and ``total_tokens`` when the backend reports them. Tool results are JSON text.

Plain Python, no Dagster; boto3 is imported only when a Bedrock client has to be made.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

ROLES = ("user", "assistant", "tool")
BACKENDS = ("none", "openai", "bedrock")


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict  # a JSON-schema object: {"type": "object", "properties": …, "required": …}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict


@dataclass(frozen=True)
class ToolResult:
    call_id: str
    name: str
    content: str  # JSON text
    is_error: bool = False


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant" | "tool"
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"a turn's role is one of {ROLES}, got {self.role!r}")


@dataclass(frozen=True)
class Reply:
    text: str
    tool_calls: tuple[ToolCall, ...]
    stop_reason: str
    usage: dict


class ChatBackend(Protocol):
    name: str

    def chat(self, system: str, turns: Sequence[Turn], tools: Sequence[ToolSpec]) -> Reply: ...


class BackendError(RuntimeError):
    """A chat backend could not answer: the message names the backend, the endpoint or model,
    what went wrong and what to do."""


# ---------------------------------------------------------------------------------------------
# The loop


def run_tool_loop(backend: ChatBackend, system: str, question: str, tools: Sequence[ToolSpec],
                  execute: Callable[[ToolCall], ToolResult],
                  max_steps: int = 6) -> tuple[str, list[tuple[ToolCall, ToolResult]]]:
    """Ask ``question``; run every tool call the model makes (in its order) and send the results
    back, until the model answers without tool calls. Returns the answer and the calls made with
    their results. ``max_steps`` bounds the model calls: a model still asking for tools on the
    last one is a `BackendError` (a loop that never converges costs tokens, not answers)."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    turns: list[Turn] = [Turn("user", question)]
    made: list[tuple[ToolCall, ToolResult]] = []
    for _ in range(max_steps):
        reply = backend.chat(system, turns, tools)
        if not reply.tool_calls:
            return reply.text, made
        results = []
        for call in reply.tool_calls:
            result = execute(call)
            if result.call_id != call.id:  # the backend pairs results to calls by id
                raise ValueError(f"the tool result for call {call.id!r} ({call.name}) carries call id "
                                 f"{result.call_id!r}: return ToolResult(call_id=call.id, …)")
            results.append(result)
            made.append((call, result))
        turns += [Turn("assistant", reply.text, tuple(reply.tool_calls)), Turn("tool", tool_results=tuple(results))]
    raise BackendError(
        f"{backend.name}: the model still asked for tools after {max_steps} steps "
        f"({len(made)} tool call(s): {', '.join(sorted({c.name for c, _ in made}))}) and gave no answer; "
        "raise max_steps, or make the tools' results answer the question more directly")


# ---------------------------------------------------------------------------------------------
# Amazon Bedrock: the Converse API

_BEDROCK_HINTS = {
    "AccessDeniedException": ("enable access to this model in the Bedrock console for the region and allow "
                              "bedrock:InvokeModel on it for these credentials"),
    "ValidationException": ("check the model id (some models are invoked through an inference profile id "
                            "such as 'us.<model id>') and that the model supports tool use in Converse"),
    "ResourceNotFoundException": "check the model id and the region: the model is not offered there",
    "ThrottlingException": "retry later, or ask for a higher Bedrock quota for this model",
    "ServiceQuotaExceededException": "retry later, or ask for a higher Bedrock quota for this model",
    "ModelTimeoutException": "retry, or ask a shorter question",
    "ModelNotReadyException": "retry in a minute: the model is being loaded",
}


class BedrockConverseBackend:
    """Bedrock's Converse API. ``client`` is a boto3 ``bedrock-runtime`` client (made on first use
    from ``region_name`` or the usual AWS environment when not given)."""

    def __init__(self, model_id: str, client: Any = None, region_name: str | None = None,
                 max_tokens: int = 1024, temperature: float = 0.0):
        self.model_id = model_id
        self.name = f"bedrock:{model_id}"
        self.region_name = region_name
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.exceptions import BotoCoreError

            try:
                self._client = boto3.client("bedrock-runtime", region_name=self.region_name)
            except BotoCoreError as exc:  # no region configured, above all
                raise BackendError(f"Bedrock Converse with model {self.model_id}: cannot make a bedrock-runtime "
                                   f"client: {exc}; set AWS_REGION (or AWS_DEFAULT_REGION)") from exc
        return self._client

    def request(self, system: str, turns: Sequence[Turn], tools: Sequence[ToolSpec]) -> dict:
        """The keyword arguments of ``converse`` (public so a test or a log can show them)."""
        kwargs: dict[str, Any] = {
            "modelId": self.model_id,
            "messages": _converse_messages(turns),
            "inferenceConfig": {"maxTokens": self.max_tokens, "temperature": self.temperature},
        }
        if system:
            kwargs["system"] = [{"text": system}]
        if tools:  # Converse rejects an empty tool list: no tools, no toolConfig
            kwargs["toolConfig"] = {"tools": [
                {"toolSpec": {"name": t.name, "description": t.description, "inputSchema": {"json": t.parameters}}}
                for t in tools]}
        return kwargs

    def chat(self, system: str, turns: Sequence[Turn], tools: Sequence[ToolSpec]) -> Reply:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs = self.request(system, turns, tools)
        try:
            response = self.client.converse(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "Unknown")
            hint = _BEDROCK_HINTS.get(code, "see the error above and the model's page in the Bedrock console")
            raise BackendError(f"Bedrock Converse with model {self.model_id} failed: {code}: "
                               f"{error.get('Message', exc)}; {hint}") from exc
        except BotoCoreError as exc:  # no credentials, no connection, a parameter botocore refuses
            raise BackendError(f"Bedrock Converse with model {self.model_id} failed: {exc}; check the AWS "
                               "credentials, the region and the network") from exc
        text, calls = [], []
        for block in response["output"]["message"]["content"]:
            if "text" in block:
                text.append(block["text"])
            elif "toolUse" in block:
                use = block["toolUse"]
                calls.append(ToolCall(use["toolUseId"], use["name"], dict(use.get("input") or {})))
        usage = response.get("usage", {})
        return Reply("".join(text), tuple(calls), response.get("stopReason", ""),
                     {"input_tokens": usage.get("inputTokens"), "output_tokens": usage.get("outputTokens"),
                      "total_tokens": usage.get("totalTokens")})


def _converse_messages(turns: Sequence[Turn]) -> list[dict]:
    messages: list[dict] = []
    for turn in turns:
        if turn.role == "tool":  # Converse carries tool results in a user message
            role, content = "user", [_converse_result(r) for r in turn.tool_results]
        else:
            role = turn.role
            content = [{"text": turn.text}] if turn.text else []  # Converse refuses empty text blocks
            content += [{"toolUse": {"toolUseId": c.id, "name": c.name, "input": c.arguments}}
                        for c in turn.tool_calls]
        if not content:
            continue
        if messages and messages[-1]["role"] == role:  # Converse wants user and assistant to alternate
            messages[-1]["content"] += content
        else:
            messages.append({"role": role, "content": content})
    return messages


def _converse_result(result: ToolResult) -> dict:
    # A JSON object goes as a json block (the model sees structure); anything else as text.
    try:
        value = json.loads(result.content)
    except ValueError:
        value = None
    block = {"json": value} if isinstance(value, dict) else {"text": result.content}
    return {"toolResult": {"toolUseId": result.call_id, "content": [block],
                           "status": "error" if result.is_error else "success"}}


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible servers: /chat/completions

_OPENAI_STOP = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}
_HTTP_HINTS = {
    400: ("the server refused the request: check that it supports tool calling for this model "
          "(llama-server needs --jinja) and that ENGAGEMENT_LLM_MODEL names a model it serves"),
    401: "check ENGAGEMENT_LLM_API_KEY",
    403: "check ENGAGEMENT_LLM_API_KEY and what this key may use",
    404: "check ENGAGEMENT_LLM_URL (the base URL ends with /v1, e.g. http://127.0.0.1:8080/v1) and the model name",
    429: "the server is rate limiting: retry later",
}


class OpenAICompatibleBackend:
    """POST ``{base_url}/chat/completions`` with tools, temperature 0."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_seconds: float = 60):
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.name = f"openai:{model}"
        self.api_key = api_key
        self.timeout_seconds = timeout_seconds

    def request(self, system: str, turns: Sequence[Turn], tools: Sequence[ToolSpec]) -> dict:
        """The JSON body sent to ``/chat/completions``."""
        messages: list[dict] = [{"role": "system", "content": system}] if system else []
        for turn in turns:
            if turn.role == "tool":  # one message per result, paired by tool_call_id
                messages += [{"role": "tool", "tool_call_id": r.call_id, "content": r.content}
                             for r in turn.tool_results]
            elif turn.role == "assistant" and turn.tool_calls:
                # "" rather than null: some servers refuse a null content
                messages.append({"role": "assistant", "content": turn.text, "tool_calls": [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                    for c in turn.tool_calls]})
            else:
                messages.append({"role": turn.role, "content": turn.text})
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0}
        if tools:
            body["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                                "parameters": t.parameters}} for t in tools]
        return body

    def chat(self, system: str, turns: Sequence[Turn], tools: Sequence[ToolSpec]) -> Reply:
        data = self._post(self.request(system, turns, tools))
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError) as exc:
            raise self._error(f"replied without choices[0].message: {json.dumps(data)[:300]}",
                              "check that the server implements OpenAI's chat completions") from exc
        calls = []
        for n, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            name, raw = function.get("name", ""), function.get("arguments")
            try:
                arguments = json.loads(raw) if isinstance(raw, str) and raw.strip() else (raw or {})
            except ValueError as exc:
                raise self._error(f"asked for tool {name!r} with arguments that are not JSON: {str(raw)[:300]!r}",
                                  "retry, or use a model (or chat template) that emits valid tool calls") from exc
            if not isinstance(arguments, dict):
                raise self._error(f"asked for tool {name!r} with arguments that are not a JSON object: "
                                  f"{str(raw)[:300]!r}", "use a model that emits tool calls as JSON objects")
            calls.append(ToolCall(call.get("id") or f"call_{n}", name, arguments))  # some servers send no id
        usage = data.get("usage") or {}
        reason = choice.get("finish_reason") or ""
        return Reply(message.get("content") or "", tuple(calls), _OPENAI_STOP.get(reason, reason),
                     {"input_tokens": usage.get("prompt_tokens"), "output_tokens": usage.get("completion_tokens"),
                      "total_tokens": usage.get("total_tokens")})

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:  # before URLError: it is one
            detail = exc.read().decode(errors="replace")[:500]
            raise self._error(f"returned HTTP {exc.code}: {detail}",
                              _HTTP_HINTS.get(exc.code, "see the server's log")) from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise self._timeout() from exc
            raise self._error(f"could not be reached ({exc.reason})",
                              "start the server (e.g. llama-server --jinja --port 8080) or set ENGAGEMENT_LLM_URL "
                              "to where it listens") from exc
        except TimeoutError as exc:  # a timeout while reading the reply
            raise self._timeout() from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._error(f"dropped the connection ({exc})", "see the server's log") from exc
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise self._error(f"replied with something that is not JSON: {raw[:300]!r}",
                              "check that ENGAGEMENT_LLM_URL points at the API (…/v1), not a web page") from exc

    def _timeout(self) -> BackendError:
        return self._error(f"gave no reply within {self.timeout_seconds:g} s",
                           "check that the server is up and not overloaded, or raise timeout_seconds")

    def _error(self, what: str, todo: str) -> BackendError:
        return BackendError(f"OpenAI-compatible backend (model {self.model}): POST {self.url} {what}; {todo}")


# ---------------------------------------------------------------------------------------------
# Settings

SETTINGS = {
    "openai": {"ENGAGEMENT_LLM_URL": "the server's base URL, e.g. http://127.0.0.1:8080/v1",
               "ENGAGEMENT_LLM_MODEL": "the model name the server serves"},
    "bedrock": {"ENGAGEMENT_BEDROCK_MODEL_ID": "the Bedrock model id or inference profile id"},
}


def backend_from_settings(env: Mapping[str, str] = os.environ) -> ChatBackend | None:
    """The backend ``ENGAGEMENT_LLM_BACKEND`` names: ``none`` (the default: no LLM), ``openai``
    (``ENGAGEMENT_LLM_URL``, ``ENGAGEMENT_LLM_MODEL``, optional ``ENGAGEMENT_LLM_API_KEY``) or
    ``bedrock`` (``ENGAGEMENT_BEDROCK_MODEL_ID``; the region from AWS_REGION / AWS_DEFAULT_REGION
    or the AWS config, as boto3 reads it)."""
    choice = (env.get("ENGAGEMENT_LLM_BACKEND") or "none").strip().lower()
    if choice not in BACKENDS:
        raise ValueError(f"ENGAGEMENT_LLM_BACKEND must be one of {', '.join(BACKENDS)}, got {choice!r}")
    if choice == "none":
        return None
    value = {name: (env.get(name) or "").strip() for name in SETTINGS[choice]}
    missing = [f"{name} ({what})" for name, what in SETTINGS[choice].items() if not value[name]]
    if missing:
        raise ValueError(f"ENGAGEMENT_LLM_BACKEND={choice} needs " + "; ".join(missing))
    if choice == "openai":
        return OpenAICompatibleBackend(value["ENGAGEMENT_LLM_URL"], value["ENGAGEMENT_LLM_MODEL"],
                                       api_key=(env.get("ENGAGEMENT_LLM_API_KEY") or "").strip() or None)
    return BedrockConverseBackend(value["ENGAGEMENT_BEDROCK_MODEL_ID"])
