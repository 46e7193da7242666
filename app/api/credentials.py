"""Provider credentials (bring your own key): create only; the key is never returned or logged."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request

from app.api.auth import current_principal
from app.api.docs import api_doc
from app.api.execution_schemas import CredentialCreate, CredentialList, CredentialOut
from app.api.schemas import ErrorOut
from app.api.validation import parse_body
from app.services import credentials
from app.services.pagination import parse_limit

bp = Blueprint("credentials", __name__, url_prefix="/credentials")


def vault() -> credentials.Vault:
    return credentials.Vault(
        credentials_key=current_app.config["CREDENTIALS_KEY"], secret_key=current_app.config["SECRET_KEY"]
    )


@bp.post("")
@api_doc(summary="Store a provider API key (encrypted; answered with its last 4 characters only)",
         body=CredentialCreate, responses={201: CredentialOut, 422: ErrorOut}, tags=["credentials"])
def create_credential() -> tuple[dict[str, Any], int]:
    body = parse_body(CredentialCreate)
    credential = credentials.create(
        current_principal(), vault(), provider=body.provider, api_key=body.api_key, base_url=body.base_url,
        limits=body.limits.model_dump() if body.limits else None,
    )
    return credentials.serialize(credential), 201


@bp.get("")
@api_doc(summary="The workspace's credentials (never the key), with their limits, newest first",
         responses={200: CredentialList}, query={"limit": {"type": "integer", "minimum": 1, "maximum": 200},
                                                  "cursor": {"type": "string"}}, tags=["credentials"])
def list_credentials() -> dict[str, Any]:
    rows, next_cursor = credentials.list_for(current_principal(), limit=parse_limit(request.args.get("limit")),
                                             cursor=request.args.get("cursor"))
    return {"items": [credentials.serialize(row) for row in rows], "next_cursor": next_cursor}


@bp.get("/<credential_id>")
@api_doc(summary="One credential (never the key), with its limits", responses={200: CredentialOut, 404: ErrorOut},
         tags=["credentials"])
def get_credential(credential_id: str) -> dict[str, Any]:
    return credentials.serialize(credentials.get(current_principal().workspace_id, credential_id))
