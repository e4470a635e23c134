"""What the real Anthropic Messages API refuses in a request body, as the fake checks it:
`request_problem(body)` returns the 400 message the real API would give, or None.

Unknown top-level fields, no `model`, no `max_tokens` (an int >= 1), an empty `messages`, a
`system` role inside `messages`, a first message that is not `user`, roles that do not
alternate, empty content, a `tool_result` that does not answer the previous assistant turn's
`tool_use` ids (or a `tool_use` left unanswered), an image without a valid source, bad tools or
tool_choice.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

_FIELDS = frozenset({
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
    "output_config", "container", "mcp_servers", "context_management",
    # fields the anthropic SDK 2.17 sends that older requests do not
    "cache_control", "diagnostics", "inference_geo", "speed", "user_profile_id", "workspace_id",
})  # fmt: skip
_BLOCK_FIELDS = {
    "text": {"text", "cache_control", "citations"},
    "image": {"source", "cache_control", "transformations"},
    "document": {"source", "title", "context", "citations", "cache_control"},
    "tool_use": {"id", "name", "input", "cache_control", "caller", "toolset_name"},
    "tool_result": {"tool_use_id", "content", "is_error", "cache_control", "toolset_name"},
    "thinking": {"thinking", "signature"},
    "redacted_thinking": {"data"},
}
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_SERVER_TOOL = re.compile(r"^[a-z_]+_\d{8}$")


def request_problem(body: dict[str, Any], *, count_only: bool = False) -> str | None:
    """Why Anthropic would answer 400 to this Messages body, or None when it is valid."""
    extra = sorted(set(body) - _FIELDS)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    if not count_only:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            return "max_tokens: Field required"
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return "max_tokens: Input should be a valid integer"
        if max_tokens < 1:
            return "max_tokens: Input should be greater than or equal to 1"
    return (
        _sampling_problem(body)
        or _system_problem(body.get("system"))
        or _tools_problem(body)
        or _messages_problem(body.get("messages"))
    )


def _sampling_problem(body: dict[str, Any]) -> str | None:
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        return "temperature: Input should be less than or equal to 1"
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            return "stop_sequences: Input should be a valid list of strings"
        if any(not s.strip() for s in stops):
            return "stop_sequences: each stop sequence must contain non-whitespace"
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        return "metadata: Extra inputs are not permitted"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream: Input should be a valid boolean"
    return None


def _system_problem(system: Any) -> str | None:
    if system is None or isinstance(system, str):
        return None
    if isinstance(system, list) and all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        for b in system
    ):
        return None
    return "system: Input should be a valid string or a list of text blocks"


def _tools_problem(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                return f"tools.{i}: Input should be a valid dictionary"
            kind = tool.get("type")
            if isinstance(kind, str) and _SERVER_TOOL.match(kind):
                continue  # a versioned server tool (web_search_20250305, ...): not checked here
            if kind not in (None, "custom"):
                return _tag_problem(f"tools.{i}", kind)
            name, schema = tool.get("name"), tool.get("input_schema")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                return (
                    f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                )
            if name in names:
                return "tools: Tool names must be unique."
            if not isinstance(schema, dict) or schema.get("type") != "object":
                return f"tools.{i}.custom.input_schema: Input should be an object schema"
            extra = sorted(set(tool) - {"type", "name", "description", "input_schema",
                                        "cache_control"})  # fmt: skip
            if extra:
                return f"tools.{i}.custom.{extra[0]}: Extra inputs are not permitted"
            names.add(name)
    choice = body.get("tool_choice")
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        return _tag_problem("tool_choice", kind)
    if kind != "none" and not tools:
        return "tool_choice: tool_choice may only be specified while providing tools"
    if kind == "tool" and choice.get("name") not in names:
        return f"tool_choice.tool.name: tool {choice.get('name')!r} was not found in tools"
    return None


def _messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return "messages: Field required"
    if not messages:
        return "messages: at least one message is required"
    pending: set[str] = set()  # tool_use ids of the previous assistant turn
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            return f"{where}: Input should be a valid dictionary"
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            return f"{where}.{extra[0]}: Extra inputs are not permitted"
        role = message.get("role")
        if role == "system":
            return (
                f'{where}.role: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            return f"{where}.role: Input should be 'user' or 'assistant'"
        if i == 0 and role != "user":
            return 'messages: first message must use the "user" role'
        if i > 0 and role == messages[i - 1]["role"]:
            return ('messages: roles must alternate between "user" and "assistant", but found '
                    f'multiple "{role}" roles in a row')  # fmt: skip
        final_assistant = role == "assistant" and i == len(messages) - 1
        blocks = message.get("content")
        if isinstance(blocks, str):
            blocks = [{"type": "text", "text": blocks}] if blocks or final_assistant else []
        if not isinstance(blocks, list):
            return f"{where}.content: Input should be a valid string or list"
        if not blocks and not final_assistant:
            return (f"{where}: all messages must have non-empty content except for the "
                    "optional final assistant message")  # fmt: skip
        problem = _blocks_problem(blocks, f"{where}.content", role)
        if problem is not None:
            return problem
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        unexpected = [tool_id for tool_id in results if tool_id not in pending]
        if unexpected:
            return (f"{where}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{unexpected[0]}. Each `tool_result` block must have a corresponding "
                    "`tool_use` block in the previous message.")  # fmt: skip
        unanswered = sorted(pending - set(results))
        if unanswered:
            return (f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {unanswered[0]}. Each `tool_use` block must have a "
                    "corresponding `tool_result` block in the next message.")  # fmt: skip
        pending = {b["id"] for b in blocks if b["type"] == "tool_use"}
    return None


def _blocks_problem(blocks: list[Any], where: str, role: str) -> str | None:
    seen_other = False
    for j, block in enumerate(blocks):
        at = f"{where}.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in _BLOCK_FIELDS:
            return _tag_problem(at, kind)
        assert isinstance(block, dict)
        extra = sorted(set(block) - _BLOCK_FIELDS[kind] - {"type"})
        if extra:
            return f"{at}.{kind}.{extra[0]}: Extra inputs are not permitted"
        if kind in ("tool_use", "thinking", "redacted_thinking") and role != "assistant":
            return f"{at}: `{kind}` blocks are only allowed in assistant messages"
        if kind in ("tool_result", "image", "document") and role != "user":
            return f"{at}: `{kind}` blocks are only allowed in user messages"
        if kind == "tool_result" and seen_other:
            return f"{at}: `tool_result` blocks must come before any other content"
        seen_other = seen_other or kind != "tool_result"
        problem = _block_problem(block, f"{at}.{kind}")
        if problem is not None:
            return problem
    return None


def _block_problem(block: dict[str, Any], at: str) -> str | None:
    kind = block["type"]
    if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
        return f"{at}.text: text content blocks must be non-empty"
    if kind == "image":
        return _image_problem(block.get("source"), f"{at}.source")
    if kind == "tool_use" and not (
        isinstance(block.get("id"), str)
        and isinstance(block.get("name"), str)
        and isinstance(block.get("input"), dict)
    ):
        return f"{at}: `tool_use` blocks need a string `id` and `name` and an object `input`"
    if kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            return f"{at}.tool_use_id: Field required"
        content = block.get("content")
        if content is not None and not isinstance(content, str | list):
            return f"{at}.content: Input should be a valid string or list"
        if isinstance(content, list):
            return _blocks_problem(content, f"{at}.content", "user")
    return None


def _image_problem(source: Any, at: str) -> str | None:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        assert isinstance(source, dict)
        if source.get("media_type") not in _IMAGE_TYPES:
            return (f"{at}.base64.media_type: Input should be 'image/jpeg', 'image/png', "
                    "'image/gif' or 'image/webp'")  # fmt: skip
        data = source.get("data")
        try:
            if not isinstance(data, str) or not data:
                raise ValueError
            base64.b64decode(data, validate=True)
        except (ValueError, binascii.Error):
            return f"{at}.base64.data: The image data is not valid base64"
        return None
    if kind == "url":
        assert isinstance(source, dict)
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            return f"{at}.url.url: Input should be a valid URL"
        return None
    return (f"{at}: Input tag '{kind}' found using 'type' does not match any of the expected "
            "tags: 'base64', 'file', 'url'")  # fmt: skip


def _tag_problem(at: str, kind: Any) -> str:
    return f"{at}: Input tag '{kind}' found using 'type' does not match any of the expected tags"


# --- small helpers -------------------------------------------------------------------------
