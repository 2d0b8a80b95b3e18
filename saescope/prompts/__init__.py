"""Prompt templates of the LLM explainers and scorers, as package data files.

In: a template name (`explain_default`, `detection`, ...). Out: `Template`, whose
`system` and `user` parts are filled with `str.format` fields and whose `sha256`
(of the file's bytes) is stored with every explanation and score made from it, so
a result says exactly which wording produced it. A template file holds the system
message, a line `---`, then the user message.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from saescope.errors import SaescopeError

SEPARATOR = "\n---\n"


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    user: str
    sha256: str

    def messages(self, **fields: object) -> tuple[tuple[str, str], ...]:
        """(role, content) pairs with `fields` filled in."""
        return (("system", self.system.format(**fields)), ("user", self.user.format(**fields)))


@cache
def template(name: str) -> Template:
    """The packaged template `name` (`saescope/prompts/<name>.txt`)."""
    path = resources.files(__package__).joinpath(f"{name}.txt")
    if not path.is_file():
        raise SaescopeError(f"no prompt template {name!r} in saescope/prompts")
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    if SEPARATOR not in text:
        raise SaescopeError(f"prompt template {name!r} has no '---' line between system and user")
    system, user = text.split(SEPARATOR, 1)
    return Template(name, system.strip(), user.strip(), hashlib.sha256(raw).hexdigest())
