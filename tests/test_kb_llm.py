"""Chat backends with tool use: Bedrock Converse through botocore's Stubber (every request checked
against botocore's service model), an OpenAI-compatible server faked on 127.0.0.1, the tool loop,
and the settings."""

import json
import socket
import subprocess
import sys

import boto3
import pytest
from botocore.stub import Stubber

from engagement_dagster.core.kb import llm
from engagement_dagster.core.kb.llm import (
    BackendError,
    BedrockConverseBackend,
    OpenAICompatibleBackend,
    ToolCall,
    ToolResult,
    ToolSpec,
    Turn,
    backend_from_settings,
    run_tool_loop,
)
from tests.fake_chat import FakeChatServer
from tests.fake_chat import completion as _completion

MODEL_ID = "anthropic.claude-3-5-haiku-20241022-v1:0"
SYSTEM = "Answer from the knowledge base only."
QUESTION = "Which segment has the highest churn?"
SEARCH = ToolSpec("search_kb", "Search the week's documents.",
                  {"type": "object", "properties": {"query": {"type": "string"}, "k": {"type": "integer"}},
                   "required": ["query"]})
RESULT = {"passages": [{"doc_id": "churn_by_segment", "text": "casual: 0.52"}]}


def _execute(call: ToolCall) -> ToolResult:
    assert call.name == "search_kb"
    return ToolResult(call.id, call.name, json.dumps({**RESULT, "query": call.arguments["query"]}))


def test_the_plain_modules_import_no_dagster():
    code = ("import sys; import engagement_dagster.core.kb.llm, engagement_dagster.core.kb.bedrock; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'dagster', 'dagster_dbt', 'dbt'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- Bedrock Converse


@pytest.fixture
def converse(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def _converse_reply(content, stop_reason):
    return {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop_reason,
            "usage": {"inputTokens": 120, "outputTokens": 30, "totalTokens": 150}, "metrics": {"latencyMs": 420}}


TOOL_SPEC = {"tools": [{"toolSpec": {"name": "search_kb", "description": "Search the week's documents.",
                                     "inputSchema": {"json": SEARCH.parameters}}}]}
INFERENCE = {"maxTokens": 512, "temperature": 0.0}
FIRST_MESSAGES = [{"role": "user", "content": [{"text": QUESTION}]}]
ASSISTANT_TOOL_USE = {"role": "assistant", "content": [
    {"text": "Let me search."},
    {"toolUse": {"toolUseId": "tooluse_1", "name": "search_kb", "input": {"query": "churn by segment"}}}]}


def test_converse_runs_the_tool_loop_with_exact_requests(converse):
    client, stub = converse
    stub.add_response("converse", _converse_reply(ASSISTANT_TOOL_USE["content"], "tool_use"), expected_params={
        "modelId": MODEL_ID, "system": [{"text": SYSTEM}], "messages": FIRST_MESSAGES, "toolConfig": TOOL_SPEC,
        "inferenceConfig": INFERENCE})
    # The second call carries the model's toolUse and our toolResult (in a user message, as Converse requires).
    tool_result = {"role": "user", "content": [{"toolResult": {
        "toolUseId": "tooluse_1", "content": [{"json": {**RESULT, "query": "churn by segment"}}],
        "status": "success"}}]}
    stub.add_response("converse", _converse_reply([{"text": "The casual segment (0.52)."}], "end_turn"),
                      expected_params={"modelId": MODEL_ID, "system": [{"text": SYSTEM}],
                                       "messages": [*FIRST_MESSAGES, ASSISTANT_TOOL_USE, tool_result],
                                       "toolConfig": TOOL_SPEC, "inferenceConfig": INFERENCE})
    backend = BedrockConverseBackend(MODEL_ID, client=client, max_tokens=512)
    answer, calls = run_tool_loop(backend, SYSTEM, QUESTION, [SEARCH], _execute)
    assert answer == "The casual segment (0.52)."
    assert [(c.id, c.name, c.arguments) for c, _ in calls] == [
        ("tooluse_1", "search_kb", {"query": "churn by segment"})]
    assert json.loads(calls[0][1].content)["passages"][0]["doc_id"] == "churn_by_segment"
    assert backend.name == f"bedrock:{MODEL_ID}"


def test_converse_reply_fields_and_no_tool_config_without_tools(converse):
    client, stub = converse
    stub.add_response("converse", _converse_reply([{"text": "Hello."}], "end_turn"), expected_params={
        "modelId": MODEL_ID, "messages": FIRST_MESSAGES, "inferenceConfig": {"maxTokens": 1024, "temperature": 0.0}})
    reply = BedrockConverseBackend(MODEL_ID, client=client).chat("", [Turn("user", QUESTION)], [])
    assert reply == llm.Reply("Hello.", (), "end_turn", {"input_tokens": 120, "output_tokens": 30,
                                                          "total_tokens": 150})


def test_converse_error_results_go_as_text_with_error_status_and_user_turns_merge():
    backend = BedrockConverseBackend(MODEL_ID, client=object())
    turns = [Turn("user", QUESTION), Turn("assistant", tool_calls=(ToolCall("t1", "search_kb", {"query": "x"}),)),
             Turn("tool", tool_results=(ToolResult("t1", "search_kb", "not json", is_error=True),)),
             Turn("user", "Please go on.")]
    messages = backend.request(SYSTEM, turns, [SEARCH])["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]  # alternating, as Converse requires
    assert messages[1]["content"] == [{"toolUse": {"toolUseId": "t1", "name": "search_kb", "input": {"query": "x"}}}]
    assert messages[2]["content"] == [
        {"toolResult": {"toolUseId": "t1", "content": [{"text": "not json"}], "status": "error"}},
        {"text": "Please go on."}]


def test_a_converse_client_error_names_the_model_and_the_code(converse):
    client, stub = converse
    stub.add_client_error("converse", service_error_code="AccessDeniedException",
                          service_message="You don't have access to the model.", http_status_code=403)
    with pytest.raises(BackendError) as info:
        BedrockConverseBackend(MODEL_ID, client=client).chat(SYSTEM, [Turn("user", QUESTION)], [SEARCH])
    message = str(info.value)
    assert MODEL_ID in message and "AccessDeniedException" in message and "enable access" in message


def test_the_loop_stops_after_max_steps(converse):
    client, stub = converse
    for n in range(2):
        stub.add_response("converse", _converse_reply(
            [{"toolUse": {"toolUseId": f"t{n}", "name": "search_kb", "input": {"query": "again"}}}], "tool_use"))
    backend = BedrockConverseBackend(MODEL_ID, client=client)
    with pytest.raises(BackendError, match=r"still asked for tools after 2 steps \(2 tool call\(s\): search_kb\)"):
        run_tool_loop(backend, SYSTEM, QUESTION, [SEARCH], _execute, max_steps=2)


# --- OpenAI-compatible servers (tests/fake_chat.py)


TOOL_CALL = {"id": "call_abc", "type": "function",
             "function": {"name": "search_kb", "arguments": json.dumps({"query": "churn by segment"})}}


def test_openai_compatible_runs_the_tool_loop():
    replies = [(200, _completion({"content": None, "tool_calls": [TOOL_CALL]}, "tool_calls")),
               (200, _completion({"content": "The casual segment (0.52)."}, "stop"))]
    with FakeChatServer(replies) as server:
        backend = OpenAICompatibleBackend(server.url + "/", "qwen", api_key="sk-local")
        answer, calls = run_tool_loop(backend, SYSTEM, QUESTION, [SEARCH], _execute)
    assert answer == "The casual segment (0.52)."
    assert [(c.id, c.arguments) for c, _ in calls] == [("call_abc", {"query": "churn by segment"})]
    first, second = (r["body"] for r in server.requests)
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-local"
    assert first == {"model": "qwen", "temperature": 0, "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        "tools": [{"type": "function", "function": {"name": "search_kb", "description": "Search the week's documents.",
                                                    "parameters": SEARCH.parameters}}]}
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "tool"]
    assert second["messages"][2]["tool_calls"] == [TOOL_CALL]
    tool = second["messages"][3]
    assert tool["tool_call_id"] == "call_abc"
    assert json.loads(tool["content"]) == {**RESULT, "query": "churn by segment"}
    assert second["tools"] == first["tools"]


def test_openai_reply_fields():
    with FakeChatServer([(200, _completion({"content": "Hi."}, "length"))]) as server:
        reply = OpenAICompatibleBackend(server.url, "qwen").chat(SYSTEM, [Turn("user", "hi")], [])
    assert reply == llm.Reply("Hi.", (), "max_tokens", {"input_tokens": 80, "output_tokens": 12, "total_tokens": 92})
    assert "tools" not in server.requests[0]["body"] and "Authorization" not in server.requests[0]["headers"]


def test_malformed_tool_arguments_are_a_backend_error():
    bad = {**TOOL_CALL, "function": {"name": "search_kb", "arguments": '{"query": "churn'}}
    with FakeChatServer([(200, _completion({"content": None, "tool_calls": [bad]}, "tool_calls"))]) as server:
        with pytest.raises(BackendError, match=r"asked for tool 'search_kb' with arguments that are not JSON"):
            OpenAICompatibleBackend(server.url, "qwen").chat(SYSTEM, [Turn("user", QUESTION)], [SEARCH])


def test_an_http_error_names_the_url_and_the_status():
    with FakeChatServer([(404, {"error": "no such model"})]) as server:
        with pytest.raises(BackendError) as info:
            OpenAICompatibleBackend(server.url, "qwen").chat(SYSTEM, [Turn("user", QUESTION)], [])
    assert f"POST {server.url}/chat/completions returned HTTP 404" in str(info.value)
    assert "no such model" in str(info.value) and "ENGAGEMENT_LLM_URL" in str(info.value)


def test_connection_refused_names_the_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(BackendError) as info:
        OpenAICompatibleBackend(url, "qwen").chat(SYSTEM, [Turn("user", QUESTION)], [])
    assert f"POST {url}/chat/completions could not be reached" in str(info.value)
    assert "start the server" in str(info.value)


def test_a_server_that_never_replies_times_out():
    with socket.socket() as sock:  # listens (the kernel accepts the connection) but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        with pytest.raises(BackendError, match=r"gave no reply within 0.2 s"):
            OpenAICompatibleBackend(url, "qwen", timeout_seconds=0.2).chat(SYSTEM, [Turn("user", QUESTION)], [])


# --- settings


def test_backend_from_settings():
    assert backend_from_settings({}) is None
    assert backend_from_settings({"ENGAGEMENT_LLM_BACKEND": "none"}) is None
    backend = backend_from_settings({"ENGAGEMENT_LLM_BACKEND": "OpenAI", "ENGAGEMENT_LLM_URL": "http://127.0.0.1:8080/v1",
                                     "ENGAGEMENT_LLM_MODEL": "qwen", "ENGAGEMENT_LLM_API_KEY": "k"})
    assert isinstance(backend, OpenAICompatibleBackend)
    assert (backend.url, backend.model, backend.api_key) == ("http://127.0.0.1:8080/v1/chat/completions", "qwen", "k")
    bedrock = backend_from_settings({"ENGAGEMENT_LLM_BACKEND": "bedrock", "ENGAGEMENT_BEDROCK_MODEL_ID": MODEL_ID})
    assert isinstance(bedrock, BedrockConverseBackend) and bedrock.model_id == MODEL_ID


def test_missing_and_unknown_settings_are_named():
    with pytest.raises(ValueError) as info:
        backend_from_settings({"ENGAGEMENT_LLM_BACKEND": "openai", "ENGAGEMENT_LLM_URL": " "})
    assert "ENGAGEMENT_LLM_URL" in str(info.value) and "ENGAGEMENT_LLM_MODEL" in str(info.value)
    with pytest.raises(ValueError, match="ENGAGEMENT_BEDROCK_MODEL_ID"):
        backend_from_settings({"ENGAGEMENT_LLM_BACKEND": "bedrock"})
    with pytest.raises(ValueError, match=r"one of none, openai, bedrock, got 'gpt'"):
        backend_from_settings({"ENGAGEMENT_LLM_BACKEND": "gpt"})
