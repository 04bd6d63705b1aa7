"""Post a Dash callback the way a browser (or any client) would: through the server's
``/_dash-update-component`` route, so every check the server makes applies.

Example::

    status, body = post_callback(app, "attention-step.value", {"attention-step-box.value": 4},
                                 state={"app-state.data": {"run": "shapes"}})
    body["response"]["attention-step"]["value"]   # 5, the nearest recorded step
"""

from __future__ import annotations

from typing import Any


def callback_key(app: Any, first_output: str) -> str:
    """The callback-map key of the callback whose first output is ``first_output`` (``id.property``;
    a callback-map key itself is returned as it is)."""
    for _attempt in range(2):
        if first_output in app.callback_map:
            return first_output
        for key in app.callback_map:
            if key.strip(".").split("...")[0].split("@")[0] == first_output:
                return key
        app.server.test_client().get("/")  # the pages' callbacks are registered by the first request
    raise KeyError(f"no callback has {first_output!r} as its first output")


def post_callback(
    app: Any,
    first_output: str,
    inputs: dict[str, Any],
    *,
    state: dict[str, Any] | None = None,
    changed: list[str] | None = None,
) -> tuple[int, Any]:
    """``(HTTP status, JSON body)`` of one callback request (``first_output``: see :func:`callback_key`).
    Inputs and states not given are ``None``;
    ``changed`` (default: every given input) are the triggering ``id.property`` names."""
    key = callback_key(app, first_output)
    spec = app.callback_map[key]
    outputs: Any = []
    for part in key.strip(".").split("..."):
        component, prop = part.rsplit(".", 1)
        outputs.append({"id": component, "property": prop})
    if not key.startswith(".."):  # a single-output callback
        outputs = outputs[0]

    def values(items: list[dict[str, Any]], given: dict[str, Any]) -> list[dict[str, Any]]:
        return [{**item, "value": given.get(f"{item['id']}.{item['property']}")} for item in items]

    payload = {
        "output": key,
        "outputs": outputs,
        "inputs": values(spec["inputs"], inputs),
        "state": values(spec["state"], state or {}),
        "changedPropIds": changed if changed is not None else list(inputs),
    }
    response = app.server.test_client().post("/_dash-update-component", json=payload)
    return response.status_code, (response.get_json(silent=True) if response.data else None)
