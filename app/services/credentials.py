"""Bring-your-own provider keys: Fernet-encrypted at rest, decrypted only inside the LLM step, never logged."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Row, bindparam, select

from app.extensions import db
from app.models import Credential
from app.models.types import new_id
from app.services import audit
from app.services.admission.limits import credential_limits
from app.services.auth import Principal
from app.services.errors import NotFound, ServiceError
from app.services.pagination import newest_first
from app.timeutil import iso

HKDF_INFO = b"agent-runtime credentials v1"


class CredentialUnreadable(ServiceError):
    """The stored key cannot be decrypted (CREDENTIALS_KEY or SECRET_KEY changed since it was stored)."""

    status = 500
    code = "credential_unreadable"


@dataclass(frozen=True)
class ProviderSecret:
    """A decrypted key with what is needed to call the provider; repr never shows the key."""

    provider: str
    api_key: str = field(repr=False)
    base_url: str | None


def fernet_key(*, credentials_key: str, secret_key: str) -> bytes:
    """CREDENTIALS_KEY if set; otherwise a key derived from SECRET_KEY (HKDF-SHA256), so one secret suffices."""
    if credentials_key:
        return credentials_key.encode()
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(secret_key.encode())
    return base64.urlsafe_b64encode(derived)


class Vault:
    """Encrypts and decrypts provider keys with the configured Fernet key."""

    def __init__(self, *, credentials_key: str, secret_key: str) -> None:
        self._fernet = Fernet(fernet_key(credentials_key=credentials_key, secret_key=secret_key))

    def __repr__(self) -> str:
        return "Vault(***)"

    def encrypt(self, api_key: str) -> str:
        return self._fernet.encrypt(api_key.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise CredentialUnreadable("stored credential cannot be decrypted with the configured key") from exc


def serialize(credential: Credential) -> dict[str, Any]:
    return {
        "id": credential.id,
        "provider": credential.provider,
        "last4": credential.last4,
        "base_url": credential.base_url,
        "limits": credential_limits(credential.limits),
        "created_at": iso(credential.created_at),
    }


def create(principal: Principal, vault: Vault, *, provider: str, api_key: str, base_url: str | None,
           limits: dict[str, int] | None = None) -> Credential:
    """Store the key encrypted (with its admission limits); the audit row names the credential, never the key."""
    credential_id = new_id()
    last4 = api_key[-4:]
    # Audit first: it locks the workspace row before the insert's foreign-key share lock could deadlock it.
    audit.record(
        workspace_id=principal.workspace_id,
        actor=principal.actor,
        action="credential.created",
        details={"credential_id": credential_id, "provider": provider, "last4": last4,
                 "limits": credential_limits(limits)},
    )
    credential = Credential(
        id=credential_id,
        workspace_id=principal.workspace_id,
        provider=provider,
        encrypted_key=vault.encrypt(api_key),
        base_url=base_url,
        last4=last4,
        limits=credential_limits(limits) if limits else None,
    )
    db.session.add(credential)
    db.session.commit()
    return credential


def list_for(principal: Principal, *, limit: int, cursor: str | None) -> tuple[list[Credential], str | None]:
    """Newest first, keyset-paginated like every list."""
    query = select(Credential).where(Credential.workspace_id == principal.workspace_id)
    rows, next_cursor = newest_first(query, Credential, limit=limit, cursor=cursor)
    return list(rows), next_cursor


def get(workspace_id: str, credential_id: str) -> Credential:
    """Another workspace's credential is indistinguishable from a missing one."""
    credential = db.session.get(Credential, credential_id)
    if credential is None or credential.workspace_id != workspace_id:
        raise NotFound(f"credential {credential_id} not found", {"credential_id": credential_id})
    return credential


# What executing reads of a credential (the execute check, the LLM step), built once per process, on the table
# (Core: no ORM object on each execution).
_CREDENTIALS = Credential.__table__
_FOR_CALLS = select(_CREDENTIALS.c.provider, _CREDENTIALS.c.encrypted_key, _CREDENTIALS.c.base_url).where(
    _CREDENTIALS.c.id == bindparam("credential_id"), _CREDENTIALS.c.workspace_id == bindparam("workspace_id"))


def _for_calls(workspace_id: str, credential_id: str) -> Row[Any]:
    """Provider, encrypted key and base URL, with `get`'s answer for another workspace's credential (404)."""
    row = db.session.execute(_FOR_CALLS, {"credential_id": credential_id, "workspace_id": workspace_id}).one_or_none()
    if row is None:
        raise NotFound(f"credential {credential_id} not found", {"credential_id": credential_id})
    return row


def provider_of(workspace_id: str, credential_id: str) -> str:
    """The provider a credential is for (POST /execute checks the agent's)."""
    return str(_for_calls(workspace_id, credential_id).provider)


def reveal(vault: Vault, workspace_id: str, credential_id: str) -> ProviderSecret:
    """Decrypt for the LLM step only."""
    credential = _for_calls(workspace_id, credential_id)
    return ProviderSecret(credential.provider, vault.decrypt(credential.encrypted_key), credential.base_url)
