"""Chat prompts: a model's own Jinja chat template, rendered the way the model was trained."""

from __future__ import annotations

import logging
from typing import Any

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

log = logging.getLogger(__name__)


class ChatTemplate:
    """A model's chat template (from its GGUF metadata), or plain "role: content" lines."""

    def __init__(self, template: str | None, *, bos: str, eos: str) -> None:
        self.source = template
        self._formatter: Jinja2ChatFormatter | None = None
        if template:
            try:
                self._formatter = Jinja2ChatFormatter(
                    template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True
                )
            except Exception as err:  # a template jinja2 cannot parse: fall back, say so
                log.warning("unusable chat template, using role: content lines: %s", err)

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The prompt for these messages, ending where the assistant's answer begins."""
        if self._formatter is not None:
            rendered = self._formatter(messages=messages)  # type: ignore[arg-type]
            return str(rendered.prompt)
        lines = [f"{m.get('role', 'user')}: {m.get('content', '')}\n" for m in messages]
        return "".join(lines) + "assistant:"
