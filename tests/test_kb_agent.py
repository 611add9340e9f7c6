"""The Q&A agent on a real week of the whole graph: offline answers quote their sources (every number
in a cited passage), a customer's churn is explained by exact TreeSHAP that matches the scored
drivers, the SQL tool runs through the agent's allow-list, a language model's tool calls go through
an OpenAI-compatible server on 127.0.0.1 and Bedrock Converse (botocore Stubber), and the CLI answers
offline without Dagster."""

import dataclasses
import json
import os
import subprocess
import sys

import boto3
import pytest
from botocore.stub import ANY, Stubber

from engagement_dagster.core.kb import agent as kb_agent
from engagement_dagster.core.kb import llm
from engagement_dagster.core.kb.tools import ToolRefused
from engagement_dagster.core.settings import PROJECT_ROOT
from engagement_dagster.core.storage.warehouse import Results, duckdb_query
from tests.conftest import KB_WEEKS
from tests.fake_chat import FakeChatServer, completion

WEEK0, WEEK = KB_WEEKS
THIS_WEEK = f"snapshot_week = date '{WEEK}'"  # the marts keep every week: the agent answers for one


@pytest.fixture(scope="module")
def week(kb_weeks):
    root, lake, *_ = kb_weeks
    path = str(root / "warehouse.duckdb")
    results = Results(lambda sql: duckdb_query(path, sql), "main", "duckdb", path)
    return root, lake, results


def _agent(week, backend=None, for_week=WEEK):
    _, lake, results = week
    return kb_agent.build_agent(week=for_week, backend=backend, lake=lake, results=results)


def _one(results, sql):
    return results.query(sql).iloc[0, 0]


def test_an_offline_answer_quotes_its_sources_and_states_no_other_number(week):
    _, _, results = week
    answer = _agent(week).ask("Which segments have the highest churn risk?")
    assert answer.backend == kb_agent.OFFLINE and "without a language model" in answer.text
    assert {c.doc_id for c in answer.citations} & {"churn_by_segment", "segment_profiles"}
    highest = _one(results, f"select max(mean_churn_probability) from churn_by_segment where {THIS_WEEK}")
    assert f"{highest:.4f}" in answer.text
    # every number of the answer (after the note) is in a passage it cites
    cited = [p.text for p in _agent(week).retrieve(answer.question, 5)
             if p.chunk_id in {c.chunk_id for c in answer.citations}]
    body = answer.text.split("\n\n", 1)[1]
    assert kb_agent.numbers_in(body) and kb_agent.unsupported(body, cited) == [] and answer.unsupported_numbers == []
    for citation in answer.citations:
        assert f"[{citation.chunk_id}]" in answer.text


def test_unsupported_numbers_are_found_by_value():
    sources = ["Casual (0.4106), 2,892 customers, week of 2026-11-16"]
    assert kb_agent.unsupported("Casual 0.41060 and 2892 [churn_by_segment#000] on 2026-11-16", sources) == []
    assert kb_agent.unsupported("Casual 0.41 and 2,893 customers", sources) == ["0.41", "2,893"]


def test_a_question_without_an_answer_says_so(week):
    answer = _agent(week).ask("zebra xylophone quasar")
    assert "no passage that answers" in answer.text and answer.citations == []


def test_why_a_customer_is_at_risk_is_explained_by_exact_treeshap(week):
    _, _, results = week
    row = results.query("select customer_id, churn_probability, churn_driver_1, churn_driver_1_contribution, "
                        "churn_driver_2, churn_driver_3, churn_drivers_method from at_risk_customers "
                        f"where {THIS_WEEK} order by churn_probability desc, customer_id limit 1").iloc[0]
    assert row["churn_drivers_method"] == "exact_treeshap"
    answer = _agent(week).ask(f"Why is customer {row['customer_id']} at risk of churning?")
    assert [u.name for u in answer.tool_calls] == ["customer_details", "explain_prediction"]
    assert all(u.ok for u in answer.tool_calls) and answer.unsupported_numbers == []
    explained = answer.tool_calls[1].result
    # the on-demand exact TreeSHAP agrees with the drivers scoring wrote for this customer
    assert [d["feature"] for d in explained["drivers"][:3]] == [row["churn_driver_1"], row["churn_driver_2"],
                                                                 row["churn_driver_3"]]
    assert explained["drivers"][0]["contribution_log_odds"] == pytest.approx(row["churn_driver_1_contribution"],
                                                                             abs=1e-4)
    assert explained["churn_probability"] == pytest.approx(row["churn_probability"], abs=1e-4)
    assert f"{row['churn_probability']:.4f}" in answer.text
    assert f"- {row['churn_driver_1']} = " in answer.text and "raises the churn risk" in answer.text


def test_customer_tools_refuse_clearly(week):
    tools = _agent(week).tools
    with pytest.raises(ToolRefused, match="is not a customer id"):
        tools.customer_details("x' or '1'='1")
    with pytest.raises(ToolRefused, match=f"is not in predictions_final for week {WEEK}"):
        tools.explain_prediction("00000000-0000-4000-8000-000000000000")
    with pytest.raises(ToolRefused, match=f"holds no rows for week 2026-11-02 \\(it holds {WEEK0}, {WEEK}\\)"):
        dataclasses.replace(tools, week="2026-11-02").customer_details("00000000-0000-4000-8000-000000000000")


def test_an_earlier_week_s_details_come_from_its_own_rows_and_its_explanation_is_refused(week):
    _, _, results = week
    someone = _one(results, f"select min(customer_id) from predictions_final where snapshot_week = date '{WEEK0}' "
                            f"and customer_id in (select customer_id from predictions_final where {THIS_WEEK})")
    previous = _agent(week, for_week=WEEK0).tools
    details = previous.customer_details(someone)["customer"]
    assert details["snapshot_week"] == WEEK0
    assert details["churn_probability"] == round(_one(results, (
        f"select churn_probability from predictions_final where customer_id = '{someone}' "
        f"and snapshot_week = date '{WEEK0}'")), 4)
    # customer_model_input, a feature table, holds the week last built only: no explanation of an earlier week
    with pytest.raises(ToolRefused, match=f"customer_model_input holds week {WEEK}, not {WEEK0}"):
        previous.explain_prediction(someone)


def test_the_sql_tool_answers_within_its_allow_list_and_refuses_the_rest(week):
    _, _, results = week
    tools = _agent(week).tools
    out = tools.query_results(f"select segment, count(*) as customers from predictions_final where {THIS_WEEK} "
                              "group by segment order by customers desc")
    assert out["columns"] == ["segment", "customers"]
    assert sum(r[1] for r in out["rows"]) == _one(results, f"select count(*) from predictions_final where {THIS_WEEK}")
    summary = tools.query_results(
        f"select customers, mean_churn_probability from weekly_prediction_summary where {THIS_WEEK}")
    assert summary["rows"][0][0] == _one(results, f"select customers from weekly_prediction_summary where {THIS_WEEK}")
    trend = tools.query_results("select snapshot_week, customers, at_risk_customers, churn_model_version "
                                "from weekly_summary order by snapshot_week")
    assert [r[0] for r in trend["rows"]] == [WEEK0, WEEK] and "weekly_summary" in trend["source"]
    for sql, reason in [("select * from customer_model_input", "customer_model_input"),
                        ("select * from read_csv('/etc/passwd')", "read_csv"),
                        ("delete from predictions_final", "SELECT"),
                        ("select 1; drop table predictions_final", "2 statements"),
                        ("select customer_id from predictions_final", "more than 200 rows")]:
        with pytest.raises(ToolRefused, match=reason):
            tools.query_results(sql)


# --- a language model through an OpenAI-compatible server on 127.0.0.1


def _message(content=None, tool_calls=None):
    message = {"content": content, **({"tool_calls": tool_calls} if tool_calls else {})}
    return 200, completion(message, "tool_calls" if tool_calls else "stop")


def test_a_language_model_calls_the_sql_tool_and_its_numbers_are_checked(week):
    _, _, results = week
    sql = (f"select segment, mean_churn_probability from churn_by_segment where {THIS_WEEK} "
           "order by mean_churn_probability desc limit 1")
    top = results.query(sql).iloc[0]
    replies = [
        _message(tool_calls=[{"id": "call_1", "type": "function",
                              "function": {"name": "query_results", "arguments": json.dumps({"sql": sql})}}]),
        _message(f"{top['segment']} has the highest mean churn probability, {top['mean_churn_probability']:.4f} "
                 "[churn_by_segment#000], and 99.5 is a number no source states."),
    ]
    with FakeChatServer(replies) as server:
        backend = llm.OpenAICompatibleBackend(server.url, "local-model")
        answer = _agent(week, backend=backend).ask("Which segment has the highest churn risk?")
    assert answer.backend == "openai:local-model"
    first, second = (r["body"] for r in server.requests)
    assert first["model"] == "local-model" and {t["function"]["name"] for t in first["tools"]} == {
        "query_results", "customer_details", "explain_prediction"}
    assert "[churn_by_segment#000]" in first["messages"][-1]["content"]  # the passages, with their ids
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_1"
    assert json.loads(tool_message["content"])["rows"][0][0] == top["segment"]
    assert [u.name for u in answer.tool_calls] == ["query_results"] and answer.tool_calls[0].ok
    assert [c.chunk_id for c in answer.citations] == ["churn_by_segment#000"]
    assert answer.unsupported_numbers == ["99.5"]


def test_bedrock_converse_answers_with_the_passages_in_the_request(week, monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    model = "anthropic.claude-3-5-haiku-20241022-v1:0"
    with Stubber(client) as stub:
        stub.add_response("converse", {
            "output": {"message": {"role": "assistant", "content": [
                {"text": "The at-risk analysis lists them [at_risk_analysis#000]."}]}},
            "stopReason": "end_turn", "usage": {"inputTokens": 100, "outputTokens": 10, "totalTokens": 110},
            "metrics": {"latencyMs": 12}},
            {"modelId": model, "system": [{"text": ANY}], "messages": ANY, "toolConfig": ANY,
             "inferenceConfig": ANY})
        answer = _agent(week, backend=llm.BedrockConverseBackend(model, client=client)).ask(
            "How many customers are at risk?")
        stub.assert_no_pending_responses()
    assert answer.backend == f"bedrock:{model}" and [c.doc_id for c in answer.citations] == ["at_risk_analysis"]


# --- the CLI


def _cli(root, *args, env=None):
    environment = {**os.environ, "ENGAGEMENT_LAKE_DIR": str(root), "ENGAGEMENT_ENV": "local",
                   "ENGAGEMENT_LLM_BACKEND": "none", **(env or {})}
    return subprocess.run([sys.executable, "-m", "engagement_dagster.cli", "ask", *args], check=False,
                          capture_output=True, text=True, env=environment, cwd=PROJECT_ROOT, timeout=300)


def test_the_cli_answers_offline_as_json_and_refuses_in_one_line(week):
    root, _, _ = week
    done = _cli(root, "How many customers are at risk?", "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["week"] == WEEK and answer["citations"] and answer["unsupported_numbers"] == []
    assert "at_risk_analysis" in {c["doc_id"] for c in answer["citations"]}

    text = _cli(root, "What changed since last week?", "--week", WEEK)
    assert text.returncode == 0 and "Sources:" in text.stdout and "week_over_week#" in text.stdout

    missing = _cli(root, "anything", "--week", "2020-01-06")
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and "no documents for week 2020-01-06" in missing.stderr
    unreachable = _cli(root, "anything", env={"ENGAGEMENT_LLM_BACKEND": "openai",
                                              "ENGAGEMENT_LLM_URL": "http://127.0.0.1:9/v1",
                                              "ENGAGEMENT_LLM_MODEL": "m"})
    assert unreachable.returncode == 2 and "127.0.0.1:9" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


def test_the_agent_imports_no_dagster():
    code = ("import sys; import engagement_dagster.core.kb.agent, engagement_dagster.core.kb.ask; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'dagster', 'dagster_dbt', 'dbt'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
