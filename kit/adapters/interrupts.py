"""A checkpointed graph's interrupts: the pending ones as plain JSON for the page (a card per tool call of
LangChain's `HumanInTheLoopMiddleware`, a question for any other `interrupt()` value), and a person's decision
checked against what the interrupt allows before it becomes LangGraph's resume value."""

from __future__ import annotations

import json
from typing import Any

from langgraph.pregel import Pregel

from kit.adapters.graph_threads import checkpoint_errors
from kit.errors import ChatError

Pending = dict[str, Any]
"""One pending interrupt for the page: {"id", "kind": "tool_calls", "actions": [...]} or {"id", "kind":
"question", "value": ...}."""


class BadDecision(ChatError):
    """A decision the interrupt does not allow, or edited arguments that do not fit the tool."""

    status = 400


class NotPending(ChatError):
    """An interrupt id the thread is not waiting on."""

    status = 404


def tools_of(graph: Pregel) -> dict[str, Any]:
    """The graph's tools by name (those of its ToolNodes, as `create_agent` builds them); {} when it has none."""
    found: dict[str, Any] = {}
    for node in graph.nodes.values():
        found.update(getattr(getattr(node, "bound", None), "tools_by_name", None) or {})
    return found


def pending_interrupts(graph: Pregel, thread_id: str) -> list[Pending]:
    """The interrupts the thread's run stopped at, described for the page ([] when it is not waiting)."""
    with checkpoint_errors():
        state = graph.get_state({"configurable": {"thread_id": thread_id}})
    tools = tools_of(graph)
    return [describe(item.id, item.value, tools) for item in state.interrupts]


def describe(interrupt_id: str, value: Any, tools: dict[str, Any]) -> Pending:
    """An interrupt's value as the page shows it: tool calls to review, or a question.

    >>> describe("i1", "Your name?", {})
    {'id': 'i1', 'kind': 'question', 'value': 'Your name?'}
    >>> request = {"action_requests": [{"name": "rm", "args": {"path": "/"}}],
    ...            "review_configs": [{"action_name": "rm", "allowed_decisions": ["approve", "reject"]}]}
    >>> describe("i2", request, {})["actions"][0]["allowed_decisions"]
    ['approve', 'reject']
    """
    if _is_hitl_request(value):
        allowed = {config["action_name"]: config["allowed_decisions"] for config in value["review_configs"]}
        actions = [
            {
                "name": action["name"],
                "args": action.get("args", {}),
                "description": action.get("description", ""),
                "allowed_decisions": list(allowed.get(action["name"], [])),
                "args_schema": _args_schema(tools.get(action["name"])),
            }
            for action in value["action_requests"]
        ]
        return {"id": interrupt_id, "kind": "tool_calls", "actions": actions}
    question = {"id": interrupt_id, "kind": "question", "value": json.loads(json.dumps(value, default=str))}
    schema = answer_schema(value)
    if schema is not None and isinstance(schema.get("properties"), dict):
        question["fields"] = list(schema["properties"])  # the form's order: the JSON response sorts object keys
    return question


def _is_hitl_request(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("action_requests"), list) and "review_configs" in value


def _args_schema(tool: Any) -> dict[str, Any] | None:
    schema = getattr(tool, "tool_call_schema", None)
    if isinstance(schema, dict):
        return schema
    try:
        return schema.model_json_schema() if schema is not None else None
    except Exception:  # a schema pydantic cannot describe: the card edits plain JSON
        return None


def resume_value(pending: Pending, body: dict[str, Any], tools: dict[str, Any]) -> Any:
    """The value to resume the interrupt with, from the page's `{"decisions": [...]}` (tool calls, one per
    action, in order) or `{"answer": ...}` (a question); BadDecision (400) when it does not fit.

    >>> item = describe("i2", {"action_requests": [{"name": "rm", "args": {}}],
    ...     "review_configs": [{"action_name": "rm", "allowed_decisions": ["approve"]}]}, {})
    >>> resume_value(item, {"decisions": [{"type": "approve"}]}, {})
    {'decisions': [{'type': 'approve'}]}
    >>> resume_value(item, {"decisions": [{"type": "reject"}]}, {})
    Traceback (most recent call last):
    kit.adapters.interrupts.BadDecision: rm allows approve, not 'reject'
    """
    if pending["kind"] == "question":
        if "answer" not in body:
            raise BadDecision('a question is answered with {"interrupt_id": ..., "answer": ...}')
        schema = answer_schema(pending["value"])
        if schema is not None:
            check_answer(body["answer"], schema)
        return body["answer"]
    decisions = body.get("decisions")
    actions = pending["actions"]
    if not isinstance(decisions, list) or len(decisions) != len(actions):
        raise BadDecision(f'"decisions" must be a list of {len(actions)} decision(s), one per tool call, in order')
    pairs = zip(decisions, actions, strict=True)
    return {"decisions": [_checked(decision, action, tools) for decision, action in pairs]}


def _checked(decision: Any, action: dict[str, Any], tools: dict[str, Any]) -> dict[str, Any]:
    kind = decision.get("type") if isinstance(decision, dict) else None
    allowed = action["allowed_decisions"]
    if kind not in allowed:
        raise BadDecision(f"{action['name']} allows {', '.join(allowed)}, not {kind!r}")
    if kind == "approve":
        return {"type": "approve"}
    if kind in ("reject", "respond"):
        message = decision.get("message", "")
        if not isinstance(message, str) or (kind == "respond" and not message):
            raise BadDecision(f"a {kind} decision's message must be a string")
        return {"type": kind, "message": message} if message else {"type": kind}
    args = (decision.get("edited_action") or {}).get("args", decision.get("args"))
    if not isinstance(args, dict):
        raise BadDecision('an edit decision carries the edited arguments as an object: {"args": {...}}')
    _validate_args(action["name"], args, tools.get(action["name"]))
    return {"type": "edit", "edited_action": {"name": action["name"], "args": args}}


def _validate_args(name: str, args: dict[str, Any], tool: Any) -> None:
    """Edited arguments against the tool's own argument schema (the one the model sees), where it has one."""
    schema = getattr(tool, "tool_call_schema", None)
    validate = getattr(schema, "model_validate", None)
    if validate is None:
        return
    from pydantic import ValidationError

    try:
        validate(args)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in error.errors())
        raise BadDecision(f"the edited arguments do not fit {name}: {problems}") from None


JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def answer_schema(value: Any) -> dict[str, Any] | None:
    """The JSON schema a question's answer must fit: the `schema` key of an `interrupt({...})` value, if any.

    >>> answer_schema({"question": "Where?", "schema": {"type": "object"}})
    {'type': 'object'}
    >>> answer_schema("Where?") is None
    True
    """
    schema = value.get("schema") if isinstance(value, dict) else None
    return schema if isinstance(schema, dict) else None


def check_answer(answer: Any, schema: dict[str, Any]) -> None:
    """BadDecision (400) naming the fields when the answer does not fit the schema; with the `jsonschema`
    package where it is installed, else a check of the type and presence of the listed properties.

    >>> check_answer({"city": "Lyon"}, {"type": "object", "properties": {"city": {"type": "string"}}})
    >>> check_answer({"n": "two"}, {"type": "object", "properties": {"n": {"type": "integer"}}})
    Traceback (most recent call last):
    kit.adapters.interrupts.BadDecision: the answer does not fit the schema: n: 'two' is not of type 'integer'
    """
    try:
        import jsonschema
    except ImportError:  # not a dependency of the kit: a smaller check of the form's own fields
        problems = basic_problems(answer, schema)
    else:
        validator = jsonschema.validators.validator_for(schema)(schema)
        errors = sorted(validator.iter_errors(answer), key=lambda error: list(error.absolute_path))
        problems = [f"{'.'.join(map(str, e.absolute_path)) or 'answer'}: {e.message}" for e in errors]
    if problems:
        raise BadDecision(f"the answer does not fit the schema: {'; '.join(problems)}")


def basic_problems(answer: Any, schema: dict[str, Any]) -> list[str]:
    """What is wrong with an object answer, checked by hand: required properties, types and enums.

    >>> schema = {"properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}}, "required": ["ok"]}
    >>> basic_problems({"n": True}, schema)
    ["ok: 'ok' is a required property", "n: True is not of type 'integer'"]
    """
    if not isinstance(answer, dict):
        return [f"answer: {answer!r} is not of type 'object'"]
    properties = schema.get("properties", {})
    problems = [f"{name}: {name!r} is a required property" for name in schema.get("required", []) if name not in answer]
    for name, rule in properties.items():
        if name not in answer or not isinstance(rule, dict):
            continue
        value, kind = answer[name], rule.get("type")
        bad_type = kind in JSON_TYPES and (
            not isinstance(value, JSON_TYPES[kind]) or (isinstance(value, bool) and kind != "boolean")
        )
        if bad_type or ("enum" in rule and value not in rule["enum"]):
            problems.append(
                f"{name}: {value!r} is not " + (f"of type {kind!r}" if bad_type else f"one of {rule['enum']}")
            )
    return problems
