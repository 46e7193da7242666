"""Attach OpenAPI facts to view functions, so /openapi.json is generated from the code that serves it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

ViewT = TypeVar("ViewT", bound=Callable[..., Any])


def api_doc(
    *,
    summary: str,
    body: type[BaseModel] | None = None,
    responses: dict[int, type[BaseModel] | str | None] | None = None,
    query: dict[str, dict[str, Any]] | None = None,
    public: bool = False,
    tags: list[str] | None = None,
) -> Callable[[ViewT], ViewT]:
    """Record the request model, response models and query parameters of a view."""

    def attach(view: ViewT) -> ViewT:
        view.openapi = {  # type: ignore[attr-defined]
            "summary": summary,
            "body": body,
            "responses": responses or {},
            "query": query or {},
            "public": public,
            "tags": tags or [],
        }
        return view

    return attach
