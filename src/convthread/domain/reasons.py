"""Reason codes: a decision stores a code and its parameters; the sentence is rendered
when it is read.

A :class:`~convthread.domain.events.Decision` records ``code`` (namespaced, such as
``continuity.recency.within_window`` or ``identity.exact_match``) and ``params`` (a
small dict of JSON scalars). :attr:`Decision.reason <convthread.domain.events.Decision>`
renders the sentence from the renderer registered for the code, given the params laid
over the decision's evidence (a value the evidence already holds is not stored twice).

A custom policy uses its own namespace and registers how its codes read::

    register_reason("acme.vip", "customer tier {tier} goes to the VIP queue")
    register_reason("acme.score", lambda p: f"score {p['score']:.2f} over the bar")

Data outlives code: a code nobody registered (the policy that wrote it is gone, or not
imported) renders as ``"<code> {params}"`` rather than raising, and so does a renderer
that cannot read the params it is given.

Follow-up clauses: a ``then`` parameter lists further codes (separated by spaces) whose
renderings are appended to the sentence; the continuity policy uses it when it adjusts a
rule's choice (the thread was resolved and reopens; an open thread takes precedence).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

from convthread.errors import ValidationError

__all__ = [
    "BUILTIN_NAMESPACES",
    "Render",
    "Scalar",
    "exported_schema",
    "nest",
    "nested",
    "register_reason",
    "render_reason",
]

#: What a parameter value may be: a JSON scalar.
Scalar: TypeAlias = "str | int | float | bool | None"
#: How a code reads: a format string (``str.format`` fields name params or evidence) or a
#: callable given the params laid over the evidence.
Render: TypeAlias = "str | Callable[[Mapping[str, Any]], str]"

#: Namespaces of the codes convthread writes; custom codes use their own.
BUILTIN_NAMESPACES: Final = frozenset({"continuity", "identity", "merge", "disclosure"})

_BUILTIN: dict[str, Callable[[Mapping[str, Any]], str]] = {}
_CUSTOM: dict[str, Callable[[Mapping[str, Any]], str]] = {}


def _as_callable(render: Render) -> Callable[[Mapping[str, Any]], str]:
    if isinstance(render, str):
        template = render
        return lambda view: template.format_map(view)
    if callable(render):
        return render
    raise ValidationError(f"a reason renderer is a format string or a callable, not {render!r}")


def _check_code(code: object) -> str:
    if not isinstance(code, str) or "." not in code.strip(".") or " " in code:
        raise ValidationError(
            f"a reason code is namespaced, like 'acme.vip_customer' (no spaces): {code!r}"
        )
    return code


def register_reason(code: str, render: Render) -> None:
    """Register how ``code`` reads: a format string or a callable taking the params (laid
    over the decision's evidence) and returning the sentence.

    Registering a custom code again replaces its renderer. ValidationError when ``code``
    has no namespace (``"acme.vip"``, not ``"vip"``), is a built-in code, or lies in a
    built-in namespace (:data:`BUILTIN_NAMESPACES`)."""
    _check_code(code)
    if code in _BUILTIN or code.split(".", 1)[0] in BUILTIN_NAMESPACES:
        raise ValidationError(f"{code!r} is a convthread reason code; use your own namespace")
    _CUSTOM[code] = _as_callable(render)


def _register_builtin(code: str, render: Render) -> None:
    """Register a code convthread itself writes (its modules do, when imported)."""
    _check_code(code)
    if code in _BUILTIN:
        raise ValidationError(f"reason code {code!r} is registered twice")
    _BUILTIN[code] = _as_callable(render)


def _fallback(code: str, params: Mapping[str, Any]) -> str:
    return f"{code} {dict(params)}" if params else code


def _render_one(code: str, params: Mapping[str, Any], view: Mapping[str, Any]) -> str:
    render = _BUILTIN.get(code) or _CUSTOM.get(code)
    if render is None:
        return _fallback(code, params)
    try:
        return render(view)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError):
        # A record older (or newer) than its renderer: say what is stored instead.
        return _fallback(code, params)


def render_reason(
    code: str,
    params: Mapping[str, Any],
    evidence: Mapping[str, str],
    stored: str = "",
) -> str:
    """The sentence of a decision: ``stored`` when there is one (a free-text decision or
    a record written before codes), else ``code`` rendered, followed by the renderings
    of the follow-up codes in ``params["then"]``."""
    if stored:
        return stored
    view = {**evidence, **params} if evidence else params
    text = _render_one(code, params, view) if code else ""
    then = params.get("then")
    if isinstance(then, str):
        for follow in then.split():
            text += _render_one(follow, params, view)
    return text


# -- decisions inside decisions


def nest(prefix: str, decision: Any) -> dict[str, Any]:
    """Params that carry ``decision`` (a Decision: its code, params, evidence and stored
    sentence) under ``prefix``, for a sentence that quotes it; :func:`nested` renders it
    back."""
    out: dict[str, Any] = {prefix: decision.code}
    for key, value in decision.params.items():
        out[f"{prefix}.{key}"] = value
    for key, ev in decision.evidence.items():
        out[f"{prefix}#{key}"] = ev
    if decision._reason:
        out[f"{prefix}!"] = decision._reason
    return out


def nested(view: Mapping[str, Any], prefix: str) -> str:
    """The sentence of the decision :func:`nest` put under ``prefix`` in ``view``."""
    params: dict[str, Any] = {}
    evidence: dict[str, str] = {}
    dot, hash_ = f"{prefix}.", f"{prefix}#"
    for key, value in view.items():
        if key.startswith(dot):
            params[key[len(dot) :]] = value
        elif key.startswith(hash_):
            evidence[key[len(hash_) :]] = value
    return render_reason(str(view[prefix]), params, evidence, str(view.get(f"{prefix}!", "")))


def exported_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (a JSON Schema with ``$defs``) made to say what export writes for a
    decision: every field, and ``reason`` the rendered sentence (readers in other
    languages cannot run the renderers)."""
    found = schema.get("$defs", {}).get("Decision")
    if found is not None:
        found["required"] = sorted(found.get("properties", {}))
        reason = found.get("properties", {}).get("reason")
        if reason is not None:
            reason.pop("default", None)
            reason["description"] = (
                "The sentence: the reason code rendered with its params (and evidence)."
            )
    return schema
