"""Bedrock Converse: pure translation, both ways (no I/O).

`to_converse(body, model)` turns an OpenAI chat-completions body (already
repaired by the pipeline) into keyword arguments for boto3's
`converse_stream` / `converse`. `ConverseStreamDecoder` turns the event
dicts boto3 yields into Switchboard's internal parts;
`converse_response_parts` does the same for a whole `converse` answer.

Request decisions:

- `system` and `developer` messages, wherever they appear, become the
  `system` list, in order; blank ones are dropped.
- `tool` messages become `toolResult` blocks in a user message; consecutive
  messages of one Converse role are merged into one message, as Converse
  requires alternating roles. A conversation that would start with the
  assistant gets a `(continued)` user message first.
- Converse rejects empty or blank text blocks (reference §1 F5): blank text
  is never sent, a message left with no blocks is dropped, and an empty tool
  result is sent as `(no output)`.
- Assistant `reasoning_content` in history is not sent: Converse reasoning
  blocks must carry the model's own signature, which OpenAI history lacks.
- `toolResult.status` is not sent (only some models accept it).
- Tool-call ids must match `[a-zA-Z0-9_.:-]{1,64}` (the pattern in
  botocore 1.44.5's model of the service), so Kimi's native
  `functions.NAME:IDX` ids pass unchanged; any other id has its other
  characters replaced by `_`, and an id that is too long, or that would
  collide with another after replacement, is cut and given a hash suffix.
  The same original id always maps to the same Converse id within a
  request, so calls and their results stay paired.
- Tool names must match `[a-zA-Z0-9_-]{1,64}`; other names are mapped the
  same way, and names in the model's answer are mapped back
  (`ConverseCall.tool_names`).
- Without `tools` in the request, Converse refuses `toolUse`/`toolResult`
  blocks, so earlier tool calls and results are sent as plain text.
- `tool_choice`: `auto` (or absent) sends no `toolChoice` (the default, and
  not every model accepts the field); `required` → `any`; a named function
  → `tool`; `none` drops the tools when the history holds no tool blocks,
  else keeps them without a `toolChoice` (Converse has no "none").
- Images: `data:` URLs become image bytes, `s3://` URLs an `s3Location`;
  Converse cannot fetch `http(s)` URLs, so those are refused with a clear
  error (`ConverseTranslationError`, a 400).
- `max_tokens` (or `max_completion_tokens`), `temperature`, `top_p` and
  `stop` go to `inferenceConfig`; other OpenAI sampling fields have no
  Converse equivalent and are not sent.

Stream decisions (stop reasons → OpenAI finish reasons): `end_turn` and
`stop_sequence` → `stop`; `tool_use` → `tool_calls`; `max_tokens` and
`model_context_window_exceeded` (the answer was cut off) → `length`;
`guardrail_intervened` and `content_filtered` → `content_filter`;
`malformed_model_output` and `malformed_tool_use` raise a retryable
`UpstreamStreamError`: the model produced something Bedrock could not parse,
a fresh sample usually succeeds, and ending with `stop` would silently end
the agent's loop (reference §1 F1). Tool calls are emitted whole on
`contentBlockStop`. Reasoning signatures and redacted reasoning have no
OpenAI form and are dropped. `exception` events become errors that say what
Bedrock reported.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    RunawayAnswer, UpstreamError, UpstreamProtocolError, UpstreamStatusError, UpstreamStreamError,
)
from ..repairs.json_args import repair_json_arguments
from ..stream import FinishPart, ReasoningPart, StreamPart, TextPart, ToolCallPart, UsagePart

#: Converse stop reason → OpenAI finish reason (reference §4).
FINISH_REASONS: Mapping[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
#: Stop reasons that mean the model's output was unusable: an error, retried.
MALFORMED_STOP_REASONS = frozenset({"malformed_model_output", "malformed_tool_use"})

#: Exceptions Bedrock can send inside a stream, and the HTTP status each stands for.
STREAM_EXCEPTIONS: Mapping[str, int] = {
    "modelStreamErrorException": 424,
    "throttlingException": 429,
    "validationException": 400,
    "internalServerException": 500,
    "serviceUnavailableException": 503,
}

#: The user message put first when a conversation would start with the assistant.
CONTINUED = "(continued)"
#: What an empty tool result is sent as (Converse rejects empty text).
NO_OUTPUT = "(no output)"

_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                  "image/gif": "gif", "image/webp": "webp"}
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*),(?P<data>.*)$", re.S)


class ConverseTranslationError(ValueError):
    """The request cannot be expressed in Converse; answered as a 400, never retried."""


@dataclass(frozen=True, slots=True)
class ConverseCall:
    """What to pass to `converse_stream(**kwargs)`, and how to read the answer."""

    kwargs: dict[str, Any]
    #: Converse tool name → the client's name, for names that had to change.
    tool_names: Mapping[str, str] = field(default_factory=dict)


class _Sanitiser:
    """Maps strings into an allowed character set and length, deterministically."""

    def __init__(self, allowed: str, limit: int) -> None:
        self._valid = re.compile(rf"^[{allowed}]{{1,{limit}}}$")
        self._invalid = re.compile(rf"[^{allowed}]")
        self._limit = limit
        self.forward: dict[str, str] = {}
        self.reverse: dict[str, str] = {}

    def __call__(self, original: str) -> str:
        if original in self.forward:
            return self.forward[original]
        mapped = original
        if not self._valid.match(original):
            mapped = self._invalid.sub("_", original) or "_"
            if len(mapped) > self._limit or mapped in self.reverse:
                mapped = self._hashed(mapped, original)
        elif original in self.reverse:  # taken by an earlier mapped string
            mapped = self._hashed(original, original)
        self.forward[original] = mapped
        self.reverse[mapped] = original
        return mapped

    def _hashed(self, mapped: str, original: str) -> str:
        digest = hashlib.sha256(original.encode("utf-8")).hexdigest()[:10]
        return f"{mapped[: self._limit - 11]}-{digest}"

    def changed(self) -> dict[str, str]:
        return {m: o for m, o in self.reverse.items() if m != o}


# -- request ------------------------------------------------------------------------

def to_converse(body: Mapping[str, Any], model: str) -> ConverseCall:
    """Translate an OpenAI chat-completions body into Converse keyword arguments."""
    names = _Sanitiser("a-zA-Z0-9_-", 64)
    ids = _Sanitiser("a-zA-Z0-9_.:-", 64)
    tool_specs = _tool_specs(body.get("tools"), names)
    choice = body.get("tool_choice")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ConverseTranslationError("'messages' must be an array")
    if choice == "none" and not _has_tool_history(messages):
        tool_specs = []
    translator = _MessageTranslator(names, ids, tools_on=bool(tool_specs))
    system: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ConverseTranslationError(f"messages[{index}] must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            system += [{"text": t} for t in _texts(message.get("content"), f"messages[{index}]")]
        else:
            translator.add(index, message)
    turns = translator.turns()
    if not turns:
        raise ConverseTranslationError("the request has no message with content to send")
    kwargs: dict[str, Any] = {"modelId": model, "messages": turns}
    if system:
        kwargs["system"] = system
    if tool_specs:
        tool_config: dict[str, Any] = {"tools": tool_specs}
        converse_choice = _tool_choice(choice, names)
        if converse_choice is not None:
            tool_config["toolChoice"] = converse_choice
        kwargs["toolConfig"] = tool_config
    inference = _inference_config(body)
    if inference:
        kwargs["inferenceConfig"] = inference
    return ConverseCall(kwargs, names.changed())


class _MessageTranslator:
    """Builds the alternating Converse message list from OpenAI messages."""

    def __init__(self, names: _Sanitiser, ids: _Sanitiser, *, tools_on: bool) -> None:
        self.names = names
        self.ids = ids
        self.tools_on = tools_on
        self.call_names: dict[str, str] = {}  # client call id → tool name (for text rendering)
        self._turns: list[dict[str, Any]] = []

    def add(self, index: int, message: Mapping[str, Any]) -> None:
        role = message.get("role")
        where = f"messages[{index}]"
        if role == "user":
            blocks = self._user_blocks(message.get("content"), where)
        elif role == "assistant":
            blocks = self._assistant_blocks(message, where)
        elif role in ("tool", "function"):
            blocks = self._tool_result_blocks(message, where)
        else:
            raise ConverseTranslationError(f"{where}: role {role!r} has no Converse form")
        if not blocks:
            return
        converse_role = "assistant" if role == "assistant" else "user"
        if self._turns and self._turns[-1]["role"] == converse_role:
            self._turns[-1]["content"].extend(blocks)
        else:
            self._turns.append({"role": converse_role, "content": blocks})

    def turns(self) -> list[dict[str, Any]]:
        if self._turns and self._turns[0]["role"] == "assistant":
            self._turns.insert(0, {"role": "user", "content": [{"text": CONTINUED}]})
        return self._turns

    def _user_blocks(self, content: Any, where: str) -> list[dict[str, Any]]:
        if content is None or isinstance(content, str):
            return [{"text": content}] if content and content.strip() else []
        if not isinstance(content, list):
            raise ConverseTranslationError(f"{where}.content must be a string or an array")
        blocks: list[dict[str, Any]] = []
        for n, part in enumerate(content):
            block = _content_part(part, f"{where}.content[{n}]")
            if block is not None:
                blocks.append(block)
        return blocks

    def _assistant_blocks(self, message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = [{"text": t} for t in _texts(message.get("content"), where)]
        calls = message.get("tool_calls")
        for n, call in enumerate(calls if isinstance(calls, list) else []):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise ConverseTranslationError(f"{where}.tool_calls[{n}] needs a function name")
            name = function["name"]
            call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else None
            call_id = call_id or f"call_{where}_{n}"
            self.call_names[call_id] = name
            arguments = _arguments(function.get("arguments"))
            if self.tools_on:
                blocks.append({"toolUse": {"toolUseId": self.ids(call_id), "name": self.names(name),
                                           "input": arguments}})
            else:
                text = json.dumps(arguments, ensure_ascii=False)
                blocks.append({"text": f"[called tool {name} with {text}]"})
        return blocks

    def _tool_result_blocks(self, message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
        content = message.get("content")
        results: list[dict[str, Any]] = []
        if isinstance(content, list):
            for n, part in enumerate(content):
                block = _content_part(part, f"{where}.content[{n}]")
                if block is not None:
                    results.append(block)
        elif isinstance(content, str) and content.strip():
            results.append({"text": content})
        elif content is not None and not isinstance(content, str):
            results.append({"text": json.dumps(content, ensure_ascii=False)})
        if not results:
            results = [{"text": NO_OUTPUT}]
        call_id = message.get("tool_call_id")
        if message.get("role") == "function" or not isinstance(call_id, str) or not call_id:
            call_id = None
        if self.tools_on and call_id is not None:
            return [{"toolResult": {"toolUseId": self.ids(call_id), "content": results}}]
        name = self.call_names.get(call_id or "", message.get("name") or "a tool")
        texts = [r["text"] for r in results if "text" in r]
        return [{"text": f"[result of {name}]\n" + "\n".join(texts)}]


def _has_tool_history(messages: list[Any]) -> bool:
    return any(isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls"))
               for m in messages)


def _texts(content: Any, where: str) -> list[str]:
    """Non-blank text pieces of a system/assistant `content` (string or text parts)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content.strip() else []
    if not isinstance(content, list):
        raise ConverseTranslationError(f"{where}.content must be a string or an array")
    texts = []
    for part in content:
        if isinstance(part, str):
            text = part
        elif isinstance(part, dict) and part.get("type") in ("text", "refusal"):
            text = str(part.get("text") if part.get("type") == "text" else part.get("refusal"))
        else:
            raise ConverseTranslationError(f"{where}: only text parts are allowed here, got {_kind(part)}")
        if isinstance(text, str) and text.strip():
            texts.append(text)
    return texts


def _kind(part: Any) -> str:
    return repr(part.get("type")) if isinstance(part, dict) else type(part).__name__


def _content_part(part: Any, where: str) -> dict[str, Any] | None:
    """One OpenAI content part as a Converse block; None for blank text."""
    if isinstance(part, str):
        return {"text": part} if part.strip() else None
    if not isinstance(part, dict):
        raise ConverseTranslationError(f"{where} must be an object")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        return {"text": text} if isinstance(text, str) and text.strip() else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise ConverseTranslationError(f"{where}.image_url needs a url")
        return {"image": image_block(url, where)}
    raise ConverseTranslationError(f"{where}: content part type {kind!r} has no Converse form")


def image_block(url: str, where: str = "image") -> dict[str, Any]:
    """A Converse `image` block for a `data:` or `s3://` URL."""
    if url.startswith("s3://"):
        extension = url.rsplit(".", 1)[-1].lower()
        fmt = _IMAGE_FORMATS.get(f"image/{extension}")
        if fmt is None:
            raise ConverseTranslationError(f"{where}: cannot tell the image format of {url[:80]!r}")
        return {"format": fmt, "source": {"s3Location": {"uri": url}}}
    match = _DATA_URL.match(url)
    if match is None:
        raise ConverseTranslationError(
            f"{where}: Bedrock Converse takes images as bytes or s3:// locations; "
            f"Switchboard does not fetch image URLs ({url[:80]!r})")
    fmt = _IMAGE_FORMATS.get((match.group("mime") or "").lower())
    if fmt is None:
        raise ConverseTranslationError(
            f"{where}: image type {match.group('mime')!r} is not one of png, jpeg, gif, webp")
    if ";base64" not in match.group("params"):
        raise ConverseTranslationError(f"{where}: image data URLs must be base64-encoded")
    try:
        data = base64.b64decode(match.group("data"), validate=False)
    except (binascii.Error, ValueError):
        raise ConverseTranslationError(f"{where}: image data is not valid base64") from None
    if not data:
        raise ConverseTranslationError(f"{where}: image data is empty")
    return {"format": fmt, "source": {"bytes": data}}


def _arguments(raw: Any) -> dict[str, Any]:
    """Tool-call arguments as the JSON object Converse's `input` needs."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str):
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = json.loads(repair_json_arguments(raw)[0])
    return parsed if isinstance(parsed, dict) else {"_raw": raw}


def _tool_specs(tools: Any, names: _Sanitiser) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ConverseTranslationError("'tools' must be an array")
    specs = []
    for n, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                or not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ConverseTranslationError(f"tools[{n}] must be a function tool with a name")
        schema = function.get("parameters")
        if not isinstance(schema, dict) or not schema:
            schema = {"type": "object", "properties": {}}
        spec: dict[str, Any] = {"name": names(function["name"]), "inputSchema": {"json": schema}}
        description = function.get("description")
        if isinstance(description, str) and description.strip():
            spec["description"] = description
        specs.append({"toolSpec": spec})
    return specs


def _tool_choice(choice: Any, names: _Sanitiser) -> dict[str, Any] | None:
    if choice is None or choice in ("auto", "none"):
        return None
    if choice == "required":
        return {"any": {}}
    if isinstance(choice, dict):
        function = choice.get("function")
        if choice.get("type") == "function" and isinstance(function, dict) \
                and isinstance(function.get("name"), str):
            return {"tool": {"name": names(function["name"])}}
    raise ConverseTranslationError(f"tool_choice {choice!r} has no Converse form")


def _inference_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        config["maxTokens"] = max_tokens
    for openai_name, converse_name in (("temperature", "temperature"), ("top_p", "topP")):
        value = body.get(openai_name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            config[converse_name] = float(value)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list):
        sequences = [s for s in stop if isinstance(s, str) and s]
        if sequences:
            config["stopSequences"] = sequences
    return config


# -- answers ----------------------------------------------------------------------

def finish_reason(stop_reason: str) -> str:
    """The OpenAI finish reason for a Converse stop reason; raises for malformed output."""
    if stop_reason in MALFORMED_STOP_REASONS:
        raise UpstreamStreamError(
            f"Bedrock stopped with {stop_reason}: the model's output could not be parsed")
    return FINISH_REASONS.get(stop_reason, "stop")


def stream_exception_error(exception_type: str, message: str) -> UpstreamError:
    """The error for an `exception` frame inside a Converse stream (reference §1 F6).

    Always an `UpstreamStreamError` (the stream had started); its status and
    whether a retry may help follow the exception: a validation error will
    fail again, the others may not.
    """
    name = exception_type[:1].lower() + exception_type[1:]
    error = UpstreamStreamError(f"Bedrock sent {name} inside the stream: {message or 'no message'}")
    error.status = STREAM_EXCEPTIONS.get(name, 502)
    error.retryable = name != "validationException"
    return error


#: Refusals with a 4xx status that another attempt may still get past.
_RETRYABLE_CODES = frozenset({"ModelErrorException", "ModelTimeoutException", "ModelNotReadyException"})


def status_error(status: int, code: str, message: str) -> UpstreamStatusError:
    """The error for a Converse request refused with an HTTP status.

    Retryable as for any host (429, 408, 5xx), and also Bedrock's model
    errors (`ModelErrorException` is a 424): the model failed this time.
    """
    error = UpstreamStatusError(status, f"Bedrock {code}: {message or 'no message'}")
    error.retryable = error.retryable or code in _RETRYABLE_CODES
    return error


@dataclass(slots=True)
class _PendingTool:
    id: str
    name: str
    fragments: list[str] = field(default_factory=list)


class ConverseStreamDecoder:
    """Turns ConverseStream event dicts (as boto3 yields them) into internal parts.

    `finished` is true once `messageStop` arrived. Tool calls are held until
    their block stops (or the message stops) and emitted whole.
    """

    def __init__(self, tool_names: Mapping[str, str] | None = None) -> None:
        self._names = dict(tool_names or {})
        self._tools: dict[int, _PendingTool] = {}
        self._held = 0  # characters of input held in `_tools`
        self.finished = False
        self.stop_reason: str | None = None

    def feed(self, event: Mapping[str, Any]) -> list[StreamPart]:
        parts: list[StreamPart] = []
        for key, value in event.items():
            if key in STREAM_EXCEPTIONS or key.endswith("Exception"):
                message = value.get("message", "") if isinstance(value, dict) else str(value)
                raise stream_exception_error(key, message)
            handler = self._HANDLERS.get(key)
            if handler is not None:
                if not isinstance(value, dict):
                    raise UpstreamProtocolError(f"Converse event {key} is not an object")
                parts += handler(self, value)
        return parts

    def finish(self) -> list[StreamPart]:
        """End of the stream: tool calls still held."""
        return self._flush_tools()

    def _block_start(self, value: Mapping[str, Any]) -> list[StreamPart]:
        start = value.get("start")
        tool = start.get("toolUse") if isinstance(start, dict) else None
        if isinstance(tool, dict):
            call_id = tool.get("toolUseId") or f"tooluse_{uuid.uuid4().hex[:24]}"
            name = str(tool.get("name") or "")
            self._tools[_index(value)] = _PendingTool(str(call_id), self._names.get(name, name))
            RunawayAnswer.check(self._held, len(self._tools))
        return []

    def _block_delta(self, value: Mapping[str, Any]) -> list[StreamPart]:
        delta = value.get("delta")
        if not isinstance(delta, dict):
            raise UpstreamProtocolError("contentBlockDelta without a delta")
        parts: list[StreamPart] = []
        text = delta.get("text")
        if isinstance(text, str) and text:
            parts.append(TextPart(text))
        tool = delta.get("toolUse")
        if isinstance(tool, dict):
            index = _index(value)
            pending = self._tools.get(index)
            if pending is None:
                raise UpstreamProtocolError(
                    f"toolUse delta for content block {index} that never started")
            fragment = tool.get("input")
            if isinstance(fragment, str):
                pending.fragments.append(fragment)
                self._held += len(fragment)
                RunawayAnswer.check(self._held, len(self._tools))
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict):
            text = reasoning.get("text")
            if isinstance(text, str) and text:
                parts.append(ReasoningPart(text))
            # `signature` and `redactedContent` have no OpenAI form.
        return parts

    def _block_stop(self, value: Mapping[str, Any]) -> list[StreamPart]:
        pending = self._tools.pop(_index(value), None)
        if pending is not None:
            self._held -= sum(map(len, pending.fragments))
        return [_tool_part(pending)] if pending is not None else []

    def _message_stop(self, value: Mapping[str, Any]) -> list[StreamPart]:
        self.stop_reason = str(value.get("stopReason") or "end_turn")
        parts = self._flush_tools()
        parts.append(FinishPart(finish_reason(self.stop_reason)))
        self.finished = True
        return parts

    def _metadata(self, value: Mapping[str, Any]) -> list[StreamPart]:
        usage = value.get("usage")
        return [usage_part(usage)] if isinstance(usage, dict) else []

    def _ignore(self, value: Mapping[str, Any]) -> list[StreamPart]:
        return []

    def _flush_tools(self) -> list[StreamPart]:
        parts: list[StreamPart] = [_tool_part(self._tools[i]) for i in sorted(self._tools)]
        self._tools.clear()
        self._held = 0
        return parts

    _HANDLERS = {
        "messageStart": _ignore,
        "contentBlockStart": _block_start,
        "contentBlockDelta": _block_delta,
        "contentBlockStop": _block_stop,
        "messageStop": _message_stop,
        "metadata": _metadata,
    }


def _index(value: Mapping[str, Any]) -> int:
    index = value.get("contentBlockIndex", 0)
    if not isinstance(index, int):
        raise UpstreamProtocolError(f"contentBlockIndex is not an integer: {index!r}")
    return index


def _tool_part(pending: _PendingTool) -> ToolCallPart:
    arguments = "".join(pending.fragments).strip() or "{}"
    return ToolCallPart(pending.id, pending.name, arguments)


def usage_part(usage: Mapping[str, Any]) -> UsagePart:
    """Converse `usage`. Its `inputTokens` leaves out the tokens read from or written to
    the prompt cache; Switchboard's `prompt_tokens` counts them in (as OpenAI's does)."""
    def num(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
    cached, written = num("cacheReadInputTokens"), num("cacheWriteInputTokens")
    prompt, completion = num("inputTokens") + cached + written, num("outputTokens")
    return UsagePart(prompt, completion, num("totalTokens") or prompt + completion,
                     cached_tokens=cached, cache_write_tokens=written)


def converse_response_parts(response: Mapping[str, Any],
                            tool_names: Mapping[str, str] | None = None) -> list[StreamPart]:
    """The parts of a whole `converse` answer, in the order a stream would give them."""
    names = tool_names or {}
    output = response.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        raise UpstreamProtocolError("Converse answer without output.message.content")
    parts: list[StreamPart] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        reasoning = block.get("reasoningContent")
        if isinstance(reasoning, dict):
            text = (reasoning.get("reasoningText") or {}).get("text")
            if isinstance(text, str) and text:
                parts.append(ReasoningPart(text))
        text = block.get("text")
        if isinstance(text, str) and text:
            parts.append(TextPart(text))
        tool = block.get("toolUse")
        if isinstance(tool, dict):
            name = str(tool.get("name") or "")
            arguments = tool.get("input")
            parts.append(ToolCallPart(
                str(tool.get("toolUseId") or f"tooluse_{uuid.uuid4().hex[:24]}"),
                names.get(name, name),
                json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)))
    parts.append(FinishPart(finish_reason(str(response.get("stopReason") or "end_turn"))))
    usage = response.get("usage")
    if isinstance(usage, dict):
        parts.append(usage_part(usage))
    return parts
