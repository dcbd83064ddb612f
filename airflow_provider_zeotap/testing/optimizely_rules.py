"""What the Optimizely emulator accepts in a body: its own model of the API's rules, kept apart from the client's.

The client checks rows before sending (``destinations/optimizely_objects.py``); this module is the emulator's
independent reading of the same public documentation, so a client bug fails against it rather than agreeing
with itself. A unit test holds the two to the same verdicts.

* Audience ``conditions``: a JSON-encoded string. The project reads the documented examples as a grammar: an
  array whose first item is ``"and"``, ``"or"`` or ``"not"``, followed by at least one operand (``"not"``: exactly
  one); an operand is a condition object with a string ``type``, or a nested array of the same form. The seed's
  default, ``["everyone"]``, is accepted as it is.
* Attribute ``key``: 1 to 64 characters of ``[a-zA-Z0-9_\\- .]``.
* List attribute ``name``: ``[-_0-9A-Za-z]+``; ``list_type``: cookies, query_parameters, zip_codes, js_variables.
"""

from __future__ import annotations

import json
import re
from typing import Any

ATTRIBUTE_KEY = re.compile(r"^[a-zA-Z0-9_\- .]+$")
ATTRIBUTE_KEY_MAX = 64
LIST_ATTRIBUTE_NAME = re.compile(r"^[-_0-9A-Za-z]+$")
LIST_TYPES = frozenset({"cookies", "query_parameters", "zip_codes", "js_variables"})
_OPERATORS = frozenset({"and", "or", "not"})


def conditions_error(value: Any) -> str | None:
    """Why ``conditions`` is refused, or None."""
    if not isinstance(value, str):
        return "conditions must be a JSON-encoded string"
    try:
        parsed = json.loads(value)
    except ValueError:
        return "conditions is not valid JSON"
    if parsed == ["everyone"]:
        return None
    return _expression_error(parsed)


def _expression_error(node: Any) -> str | None:
    if not isinstance(node, list) or not node:
        return "conditions must be a non-empty array such as [\"and\", {\"type\": ...}]"
    operator, operands = node[0], node[1:]
    if operator not in _OPERATORS:
        return f"conditions must start with \"and\", \"or\" or \"not\", not {json.dumps(operator)}"
    if not operands or (operator == "not" and len(operands) != 1):
        return f"\"{operator}\" needs {'exactly one operand' if operator == 'not' else 'at least one operand'}"
    for operand in operands:
        if isinstance(operand, dict):
            if not isinstance(operand.get("type"), str) or not operand["type"]:
                return "every condition object needs a string \"type\""
        else:
            problem = _expression_error(operand)
            if problem:
                return problem
    return None


def attribute_key_error(key: Any) -> str | None:
    if not isinstance(key, str) or not key:
        return "key is required"
    if len(key) > ATTRIBUTE_KEY_MAX:
        return f"key must be at most {ATTRIBUTE_KEY_MAX} characters"
    if not ATTRIBUTE_KEY.match(key):
        return "key may only contain letters, digits, '_', '-', ' ' and '.'"
    return None
