"""Provider credentials (bring your own key): create only; the key is never returned or logged."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from app.api.auth import current_principal
from app.api.docs import api_doc
from app.api.execution_schemas import CredentialCreate, CredentialOut
from app.api.schemas import ErrorOut
from app.api.validation import parse_body
from app.services import credentials

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
        current_principal(), vault(), provider=body.provider, api_key=body.api_key, base_url=body.base_url
    )
    return credentials.serialize(credential), 201
