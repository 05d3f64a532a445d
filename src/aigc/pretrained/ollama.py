"""An Ollama ``Modelfile`` beside an exported GGUF file: FROM, stop tokens, sampling defaults, chat TEMPLATE.

Ollama does not run a model's Jinja chat template: it needs the same format written as a Go template.
Four families are recognised by what their Jinja source writes around a turn (not by any name): ChatML
(Qwen, SmolLM), Llama 3, Mistral's ``[INST]`` and aigc's own ``Role: text`` lines. Their Go forms are
below; a default system message that the Jinja template adds when none is given is found by rendering
it, and becomes the Modelfile's SYSTEM. Any other template gets a comment saying it must be written by
hand, never a guessed one that would format turns differently from training.

Stop strings are the end-of-sequence tokens' text and the run's ``generate.stop`` (with aigc's default
template, its ``\\nUser:``), so the model stops talking where ``aigc generate`` stops.
"""

from __future__ import annotations

import json
from pathlib import Path

from aigc.chat_template import ChatTemplate, ChatTemplateError
from aigc.config import Config

CHATML = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
LLAMA3 = """{{ BOS }}{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""
MISTRAL = """{{ BOS }}{{- range $i, $m := .Messages }}
{{- if eq $m.Role "user" }} [INST] {{ if and $.System (eq $i 1) }}{{ $.System }}

{{ end }}{{ $m.Content }} [/INST]
{{- else if eq $m.Role "assistant" }} {{ $m.Content }}{{ EOS }}
{{- end }}
{{- end }}"""
AIGC = """{{- range .Messages }}{{ if or (eq .Role "system") (eq .Role "developer") }}System{{ else if eq .Role "user" }}User\
{{ else if eq .Role "assistant" }}Assistant{{ else }}{{ .Role }}{{ end }}: {{ .Content }}
{{ end }}Assistant:"""

PLACEHOLDERS = {"bos_token": "{{ BOS }}", "eos_token": "{{ EOS }}"}  # where a Go template needs a special token's text
# family -> (strings its Jinja source writes, the Go template, the special tokens it needs)
FAMILIES = {
    "chatml": (("<|im_start|>", "<|im_end|>"), CHATML, ()),
    "llama3": (("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), LLAMA3, ("bos_token",)),
    "mistral": (("[INST]", "[/INST]"), MISTRAL, ("bos_token", "eos_token")),
}


def template_family(chat: ChatTemplate) -> str | None:
    """Which family's Go template formats turns as ``chat`` does; None when none is known."""
    if chat.source == ChatTemplate().source:
        return "aigc"
    return next((name for name, (marks, _, _) in FAMILIES.items() if all(m in chat.source for m in marks)), None)


def go_template(chat: ChatTemplate, family: str) -> str:
    if family == "aigc":
        return AIGC
    _, template, needs = FAMILIES[family]
    for token in needs:  # the special tokens the Jinja template reads, written out
        template = template.replace(PLACEHOLDERS[token], chat.tokens.get(token, ""))
    return template


def default_system(chat: ChatTemplate, family: str) -> str | None:
    """The system message the Jinja template inserts when the conversation has none (ChatML variants)."""
    if family != "chatml":
        return None
    try:
        text = chat.render([{"role": "user", "content": "\x00"}], add_generation_prompt=False)
    except ChatTemplateError:
        return None
    start = "<|im_start|>system\n"
    if start not in text:
        return None
    return text.split(start, 1)[1].split("<|im_end|>", 1)[0]


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a double-quoted string with escapes, as Ollama reads it


def write_modelfile(path: Path, gguf_file: str, chat: ChatTemplate, tokens: list[str], eos_ids: list[int],
                    config: Config) -> str | None:
    """Write the Modelfile for ``gguf_file`` (a name in the same folder); returns the template family or None."""
    settings = config.generate
    family = template_family(chat)
    lines = [f"# Ollama model of the aigc run {config.run_dir.name}: ollama create NAME -f Modelfile", f"FROM ./{gguf_file}", ""]
    if family is None:
        lines += ["# The run's chat template is not one whose Ollama form aigc knows (ChatML, Llama 3, Mistral,",
                  "# aigc's own). Write a TEMPLATE by hand from the Jinja source in the GGUF file's",
                  "# tokenizer.chat_template (Ollama's docs: docs/template.md); without one, Ollama sends prompts as they are."]
    else:
        lines.append(f'TEMPLATE """{go_template(chat, family)}"""')
        system = default_system(chat, family)
        if system:
            lines.append(f'SYSTEM """{system}"""')
    lines.append("")
    stops = [tokens[i] for i in eos_ids if i < len(tokens)] + list(settings.stop) + list(chat.stop)
    lines += [f"PARAMETER stop {_quote(stop)}" for stop in dict.fromkeys(stops)]
    lines += [f"PARAMETER temperature {settings.temperature}", f"PARAMETER top_k {settings.top_k or 0}",
              f"PARAMETER top_p {settings.top_p}", f"PARAMETER min_p {settings.min_p}",
              f"PARAMETER repeat_penalty {settings.repetition_penalty}",
              f"PARAMETER num_ctx {config.model.block_size}", f"PARAMETER num_predict {settings.max_new_tokens}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return family
