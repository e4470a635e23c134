"""What the real OpenAI chat/completions API refuses about tools, as the fake checks it:
`chat_problem(body)` returns the 400 OpenAI would give (message, param, code), or None.

Only the rules a translating gateway can break are checked, with OpenAI's own wording: a tool
that is not `{"type": "function", "function": {"name"}}`, a function name longer than 64 or
outside `^[a-zA-Z0-9_-]+$`, a `tool_choice` or `parallel_tool_calls` without tools, a named
tool_choice naming no tool, an unknown role, a `tool` message that answers no preceding
`tool_calls`, and an assistant's `tool_calls` left without a `tool` answer for every id. Unknown
fields pass, as they do at OpenAI for most of them.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
_NAME_LIMIT = 64
_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_CHOICES = frozenset({"none", "auto", "required"})


class Problem(NamedTuple):
    message: str
    param: str | None
    code: str | None


def chat_problem(body: dict[str, Any]) -> Problem | None:
    """Why OpenAI would answer 400 to this chat/completions body's tools, or None."""
    tools = body.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            return Problem("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
        for index, tool in enumerate(tools):
            name_or_problem = _tool_name(tool, f"tools[{index}]")
            if isinstance(name_or_problem, Problem):
                return name_or_problem
            names.append(name_or_problem)
    return _choice_problem(body, names if tools else None) or _messages_problem(body["messages"])


def _tool_name(tool: Any, at: str) -> str | Problem:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return Problem(f"Invalid value for '{at}.type': expected 'function'.", f"{at}.type",
                       "invalid_value")  # fmt: skip
    function = tool.get("function")
    if not isinstance(function, dict):
        return Problem(f"Missing required parameter: '{at}.function'.", f"{at}.function",
                       "missing_required_parameter")  # fmt: skip
    name = function.get("name")
    param = f"{at}.function.name"
    if not isinstance(name, str):
        return Problem(f"Missing required parameter: '{param}'.", param,
                       "missing_required_parameter")  # fmt: skip
    if len(name) > _NAME_LIMIT:
        return Problem(
            f"Invalid '{param}': string too long. Expected a string with maximum length "
            f"{_NAME_LIMIT}, but got a string with length {len(name)} instead.",
            param,
            "string_above_max_length",
        )
    if not _NAME.match(name):
        return Problem(
            f"Invalid '{param}': string does not match pattern. Expected a string that matches "
            "the pattern '^[a-zA-Z0-9_-]+$'.",
            param,
            "invalid_value",
        )
    return name


def _choice_problem(body: dict[str, Any], names: list[str] | None) -> Problem | None:
    for field in ("tool_choice", "parallel_tool_calls"):
        if field in body and names is None:
            return Problem(f"Invalid value for '{field}': '{field}' is only allowed when 'tools' "
                           "are specified.", field, None)  # fmt: skip
    choice = body.get("tool_choice")
    if choice is None or (isinstance(choice, str) and choice in _CHOICES):
        return None
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or choice.get("type") != "function":
        return Problem("Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
                       "an object naming a function.", "tool_choice", "invalid_value")  # fmt: skip
    if names is not None and name not in names:
        return Problem(f"Invalid value for 'tool_choice': function '{name}' is not among "
                       "'tools'.", "tool_choice", "invalid_value")  # fmt: skip
    return None


def _messages_problem(messages: list[Any]) -> Problem | None:
    waiting: list[Any] = []  # the tool_call ids of the last assistant turn not yet answered
    waiting_at = 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        at = f"messages.[{index}].role"
        if role not in _ROLES:
            supported = ", ".join(f"'{r}'" for r in _ROLES[:-1]) + f", and '{_ROLES[-1]}'"
            return Problem(f"Invalid value: '{role}'. Supported values are: {supported}.",
                           f"messages[{index}].role", "invalid_value")  # fmt: skip
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in waiting:
                return Problem("Invalid parameter: messages with role 'tool' must be a response "
                               "to a preceeding message with 'tool_calls'.", at, None)  # fmt: skip
            waiting.remove(call_id)
            continue
        if waiting:
            return _unanswered(waiting, waiting_at)
        calls = message.get("tool_calls") if role == "assistant" else None
        if isinstance(calls, list) and calls:
            waiting = [c.get("id") for c in calls if isinstance(c, dict)]
            waiting_at = index
    return _unanswered(waiting, waiting_at) if waiting else None


def _unanswered(waiting: list[Any], index: int) -> Problem:
    return Problem(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to "
        "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        + ", ".join(str(w) for w in waiting),
        f"messages.[{index}].role",
        None,
    )
