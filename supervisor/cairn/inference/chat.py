"""Chat prompts: a model's own Jinja chat template, rendered the way the model was trained."""

from __future__ import annotations

import logging
from typing import Any

from cairn.inference.tools import ToolFormat, detect

log = logging.getLogger(__name__)


class TemplateError(ValueError):
    """The template refused these messages (e.g. raise_exception for roles out of order)."""


class ChatTemplate:
    """A model's chat template (from its GGUF metadata), or plain "role: content" lines."""

    def __init__(self, template: str | None, *, bos: str, eos: str) -> None:
        # Imported here: a worker loads llama_cpp only after setting its OpenMP environment.
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.source = template
        self._formatter: Jinja2ChatFormatter | None = None
        if template:
            try:
                self._formatter = Jinja2ChatFormatter(
                    template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True
                )
            except Exception as err:  # a template jinja2 cannot parse: fall back, say so
                log.warning("unusable chat template, using role: content lines: %s", err)
        # The plain fallback knows no tools: the generic format describes them itself.
        self.tool_format = detect(template) if self._formatter is not None else ToolFormat.GENERIC

    def render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        """The prompt for these messages, ending where the assistant's answer begins.

        tools (OpenAI's `tools` entries) go to the template's own `tools` variable.
        """
        if self._formatter is not None:
            import jinja2

            try:
                rendered = self._formatter(messages=messages, tools=tools)  # type: ignore[arg-type]
            except (jinja2.TemplateError, ValueError, TypeError, KeyError) as err:
                raise TemplateError(
                    f"the model's chat template refused the messages: {err}"
                ) from err
            return str(rendered.prompt)
        lines = [f"{m.get('role', 'user')}: {m.get('content') or ''}\n" for m in messages]
        return "".join(lines) + "assistant:"
