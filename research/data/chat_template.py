"""Chat templates: a tokenizer's Jinja template, rendered as transformers' apply_chat_template does.

`render(template, messages, add_generation_prompt=..., special_tokens=...)` gives the text of
`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`: the same
sandboxed Jinja environment (trim_blocks, lstrip_blocks, loop controls, `raise_exception`, a
`tojson` that keeps non-ASCII, `{% generation %}` blocks rendered as their body) and the same
variables (messages, add_generation_prompt, tools and documents as None, and the special tokens:
bos_token, eos_token, ...). One deliberate difference: `strftime_now` is not defined, so a
template falls back to its own default date and a row renders the same text on every day (a
resumed run must see the tokens it started with).

`assistant_spans` finds the assistant turns of a rendered conversation by rendering its prefixes:
turn i spans from the end of `render(messages[:i], add_generation_prompt=True)` to the end of
`render(messages[:i + 1])`, each of which must be a prefix of the whole conversation's text. The
span holds the assistant's content and the template's end-of-turn text (`<|eot_id|>`,
`<|im_end|>\\n`, ...), so the model learns where a reply stops. A template that renders earlier
turns differently once later ones follow (one that drops past reasoning, say) fails the prefix
check: such a row is reported as a bad line, never guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import functools
import json
from typing import Any

from research import errors

# The format research.data.sft uses for a tokenizer without a template, as a template: what
# write_hf_tokenizer ships with a model fine-tuned that way.
LMFORGE_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '### ' + message['role'] | capitalize + ':\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}")


@functools.lru_cache(maxsize=16)
def compile_template(template: str):
  """The compiled template; a UserError names a template that Jinja cannot compile."""
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import ext, sandbox  # pylint: disable=g-import-not-at-top

  class GenerationBlocks(ext.Extension):
    """transformers' `{% generation %}...{% endgeneration %}` (its assistant-mask marker),
    rendered as its body."""
    tags = {'generation'}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(('name:endgeneration',), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method('_body'), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[GenerationBlocks, ext.loopcontrols])
  env.filters['tojson'] = tojson
  env.globals['raise_exception'] = raise_exception
  try:
    return env.from_string(template)
  except jinja2.exceptions.TemplateSyntaxError as e:
    raise errors.UserError(f'the chat template does not compile (line {e.lineno}: {e.message}): '
                           'fix chat_template in tokenizer_config.json or chat_template.jinja'
                           ) from None


def render(template: str, messages: Sequence[Mapping[str, Any]], *,
           add_generation_prompt: bool = False,
           special_tokens: Mapping[str, str] | None = None) -> str:
  """The text of `messages` in `template`; a UserError carries the template's own complaint."""
  import jinja2  # pylint: disable=g-import-not-at-top

  # transformers drops keys whose value is None: templates test for a key, not for None.
  plain = [{k: v for k, v in m.items() if v is not None} for m in messages]
  try:
    return compile_template(template).render(
        **dict(special_tokens or {}), messages=plain, tools=None, documents=None,
        add_generation_prompt=add_generation_prompt)
  except jinja2.exceptions.TemplateError as e:
    raise errors.UserError(f'the chat template refused the conversation: {e}') from None


def assistant_spans(template: str, messages: Sequence[Mapping[str, Any]], *,
                    special_tokens: Mapping[str, str] | None = None
                    ) -> tuple[str, list[tuple[int, int]]]:
  """The conversation's text and the [start, end) character spans of its assistant turns.

  Raises:
    UserError: the template refuses the conversation, or does not render its prefixes as
      prefixes of the whole (module doc).
  """
  text = render(template, messages, special_tokens=special_tokens)
  spans = []
  for i, message in enumerate(messages):
    if message.get('role') != 'assistant':
      continue
    before = render(template, messages[:i], add_generation_prompt=True,
                    special_tokens=special_tokens)
    through = render(template, messages[:i + 1], special_tokens=special_tokens)
    if not (through.startswith(before) and text.startswith(through)):
      raise errors.UserError(
          f'the chat template renders the conversation up to message {i} differently from its '
          'start in the whole conversation, so the assistant turns cannot be found')
    spans.append((len(before), len(through)))
  return text, spans
