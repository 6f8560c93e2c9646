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
    return [describe(item.id, item.value, tools, getattr(item, "response_schema", None)) for item in state.interrupts]


def describe(
    interrupt_id: str, value: Any, tools: dict[str, Any], response_schema: dict[str, Any] | None = None
) -> Pending:
    """An interrupt's value as the page shows it: tool calls to review (`HumanInTheLoopMiddleware`, batched or
    per call), or a question, with the JSON schema its answer must fit where the graph gave one
    (`interrupt(value, response_schema=...)`, or a `schema` key in the value).

    >>> describe("i1", "Your name?", {})
    {'id': 'i1', 'kind': 'question', 'value': 'Your name?'}
    >>> request = {"action_requests": [{"name": "rm", "args": {"path": "/"}}],
    ...            "review_configs": [{"action_name": "rm", "allowed_decisions": ["approve", "reject"]}]}
    >>> describe("i2", request, {})["actions"][0]["allowed_decisions"]
    ['approve', 'reject']
    """
    if _is_hitl_request(value):
        allowed = {config["action_name"]: config["allowed_decisions"] for config in value["review_configs"]}
        actions = [_action(action, allowed.get(action["name"], []), tools) for action in value["action_requests"]]
        return {"id": interrupt_id, "kind": "tool_calls", "actions": actions}
    if _is_tool_approval(value):  # per_call mode: one interrupt per gated tool call, answered by one decision
        action = _action(value, decision_types(response_schema), tools)
        return {"id": interrupt_id, "kind": "tool_calls", "per_call": True, "actions": [action]}
    question = {"id": interrupt_id, "kind": "question", "value": json.loads(json.dumps(value, default=str))}
    schema = response_schema if isinstance(response_schema, dict) else answer_schema(value)
    if schema is not None:
        question["schema"] = schema
        if isinstance(schema.get("properties"), dict):
            question["fields"] = list(schema["properties"])  # the form's order: the JSON response sorts object keys
    return question


def _action(request: dict[str, Any], allowed: list[str], tools: dict[str, Any]) -> dict[str, Any]:
    """One tool call to review, as the page's card shows it (from an action request or a per-call approval)."""
    return {
        "name": request["name"],
        "args": request.get("args", {}),
        "description": request.get("description", ""),
        "allowed_decisions": list(allowed),
        "args_schema": _args_schema(tools.get(request["name"])),
    }


def _is_hitl_request(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("action_requests"), list) and "review_configs" in value


def _is_tool_approval(value: Any) -> bool:
    return isinstance(value, dict) and value.get("type") == "tool_approval" and isinstance(value.get("name"), str)


ALL_DECISIONS = ["approve", "edit", "reject", "respond"]


def decision_types(response_schema: Any) -> list[str]:
    """The decisions a per-call approval allows, read from its response schema: the `type` constant of each
    member of the union (or of the one object schema when a single decision is allowed).

    >>> decision_types({"properties": {"type": {"const": "approve"}}})
    ['approve']
    >>> decision_types({"oneOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/R"}], "$defs": {
    ...     "A": {"properties": {"type": {"const": "approve"}}}, "R": {"properties": {"type": {"const": "reject"}}}}})
    ['approve', 'reject']
    """
    if not isinstance(response_schema, dict):
        return list(ALL_DECISIONS)  # no schema to read: the middleware's own check has the last word
    definitions = response_schema.get("$defs", {})
    members = response_schema.get("oneOf") or response_schema.get("anyOf") or [response_schema]
    found = []
    for member in members:
        if isinstance(member, dict) and "$ref" in member:
            member = definitions.get(str(member["$ref"]).rsplit("/", 1)[-1], {})
        kind = ((member.get("properties") or {}).get("type") or {}).get("const") if isinstance(member, dict) else None
        if kind in ALL_DECISIONS:
            found.append(kind)
    return found or list(ALL_DECISIONS)


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
        schema = pending.get("schema")
        if schema is None:
            return body["answer"]
        answer = typed_answer(body["answer"], schema)
        check_answer(answer, schema)
        return answer
    decisions = body.get("decisions")
    actions = pending["actions"]
    if not isinstance(decisions, list) or len(decisions) != len(actions):
        raise BadDecision(f'"decisions" must be a list of {len(actions)} decision(s), one per tool call, in order')
    checked = [_checked(decision, action, tools) for decision, action in zip(decisions, actions, strict=True)]
    return checked[0] if pending.get("per_call") else {"decisions": checked}


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


def typed_answer(answer: Any, schema: dict[str, Any]) -> Any:
    """A typed answer to a question whose schema wants a number or a yes/no: the text from the input box read as
    JSON (`"42"` is 42, `"true"` is True); any other answer as it came.

    >>> typed_answer("42", {"type": "integer"}), typed_answer("42", {"type": "string"})
    (42, '42')
    """
    if isinstance(answer, str) and schema.get("type") in ("integer", "number", "boolean", "null"):
        try:
            return json.loads(answer.strip())
        except ValueError:
            return answer  # the schema check names what is wrong
    return answer


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
    """What is wrong with an answer, checked by hand: for an object its required properties, then each
    property's type and enum; for a plain value its own type and enum.

    >>> schema = {"properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}}, "required": ["ok"]}
    >>> basic_problems({"n": True}, schema)
    ["ok: 'ok' is a required property", "n: True is not of type 'integer'"]
    >>> basic_problems("old", {"type": "integer"})
    ["answer: 'old' is not of type 'integer'"]
    """
    if "properties" not in schema and schema.get("type") != "object":
        return _value_problems("answer", answer, schema)
    if not isinstance(answer, dict):
        return [f"answer: {answer!r} is not of type 'object'"]
    problems = [f"{name}: {name!r} is a required property" for name in schema.get("required", []) if name not in answer]
    for name, rule in schema.get("properties", {}).items():
        if name in answer and isinstance(rule, dict):
            problems += _value_problems(name, answer[name], rule)
    return problems


def _value_problems(name: str, value: Any, rule: dict[str, Any]) -> list[str]:
    kind = rule.get("type")
    wrong_bool = isinstance(value, bool) and kind != "boolean"  # True is an int to Python, not to JSON
    if kind in JSON_TYPES and (not isinstance(value, JSON_TYPES[kind]) or wrong_bool):
        return [f"{name}: {value!r} is not of type {kind!r}"]
    if "enum" in rule and value not in rule["enum"]:
        return [f"{name}: {value!r} is not one of {rule['enum']}"]
    return []
