"""The Fernet vault: round trip, key derivation from SECRET_KEY, and no key in reprs."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from app.services.credentials import CredentialUnreadable, ProviderSecret, Vault, fernet_key


def test_round_trip_and_ciphertext_hides_the_key() -> None:
    vault = Vault(credentials_key="", secret_key="s3cret")
    token = vault.encrypt("sk-live-abcdef")
    assert "sk-live" not in token
    assert vault.decrypt(token) == "sk-live-abcdef"


def test_derived_key_is_stable_and_secret_specific() -> None:
    assert fernet_key(credentials_key="", secret_key="a") == fernet_key(credentials_key="", secret_key="a")
    assert fernet_key(credentials_key="", secret_key="a") != fernet_key(credentials_key="", secret_key="b")
    Fernet(fernet_key(credentials_key="", secret_key="a"))  # a valid Fernet key


def test_explicit_credentials_key_is_used() -> None:
    key = Fernet.generate_key().decode()
    token = Vault(credentials_key=key, secret_key="ignored").encrypt("k")
    assert Fernet(key.encode()).decrypt(token.encode()) == b"k"


def test_wrong_key_is_a_clear_error() -> None:
    token = Vault(credentials_key="", secret_key="one").encrypt("k")
    with pytest.raises(CredentialUnreadable):
        Vault(credentials_key="", secret_key="two").decrypt(token)


def test_reprs_never_show_the_key() -> None:
    assert "sk-live" not in repr(ProviderSecret("openai", "sk-live-abcdef", None))
    assert "s3cret" not in repr(Vault(credentials_key="", secret_key="s3cret"))
