"""The entry points' view of the local servers: settings with the running local Label Studio
filled in where the user configured none. Called at the edges (CLI, flows); the loop's steps
only ever see the resulting settings."""

from __future__ import annotations

from pydantic import SecretStr

from fleetloop.settings import Settings


def resolve_settings(settings: Settings) -> Settings:
    """``settings``, with ``label_studio`` url, token and document root taken from the local
    server started by ``fleetloop services up`` when the settings name no Label Studio."""
    from fleetloop.local import label_studio

    ls = settings.label_studio
    if ls.url and ls.token:
        return settings
    state = label_studio.read_state(settings.home)
    if state is None:
        return settings
    if ls.url and ls.url.rstrip("/") != state.url.rstrip("/"):
        return settings  # another server is configured (without a token): leave the error to the caller
    resolved = ls.model_copy(update={
        "url": state.url,
        "token": ls.token or SecretStr(state.token),
        "document_root": ls.document_root or state.document_root,
    })
    return settings.model_copy(update={"label_studio": resolved})
