"""How a prompt is turned into model input text: shared by training and generation."""

from __future__ import annotations

# safe-rlhf's template (PKU-SafeRLHF / Beaver models); the default when no chat template.
SAFE_RLHF_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"

# The system prompt of context distillation (safedpo pairs): the model's own refusals are the
# safe answers it learns from.
SAFETY_SYSTEM_PROMPT = (
    "You are a helpful and harmless assistant. If a request could help someone cause harm or "
    "break the law, refuse it in one short sentence, such as \"I'm sorry, but I can't help "
    "with that.\" Otherwise answer helpfully.")


def format_prompt(tokenizer, prompt: str, prompt_template: str | None = None,
                  system_prompt: str | None = None) -> str:
    """Model input text for ``prompt``.

    ``prompt_template`` None or "auto": the tokenizer's chat template if it has one, else the
    safe-rlhf template. "chat": the chat template (error if none). Any other string is a
    template with a ``{prompt}`` field. ``system_prompt``: a system message in a chat
    template; with a string template it goes before the prompt, separated by a blank line.
    """
    template = prompt_template or "auto"
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" or (template == "auto" and has_chat):
        if not has_chat:
            raise ValueError("prompt_template='chat' but the tokenizer has no chat_template")
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return tokenizer.apply_chat_template(
            system + [{"role": "user", "content": prompt}], tokenize=False,
            add_generation_prompt=True
        )
    if template == "auto":
        template = SAFE_RLHF_TEMPLATE
    if "{prompt}" not in template:
        raise ValueError(f"prompt_template must contain '{{prompt}}', got {template!r}")
    return template.replace("{prompt}", f"{system_prompt}\n\n{prompt}" if system_prompt else prompt)
