"""JSON payloads in the shapes discord.py 2.7.1 accepts (see /work/shared/discord-payloads/)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .records import EPHEMERAL, Interaction, Message, User

if TYPE_CHECKING:
    from .emulator import DiscordEmulator

ALL_PERMISSIONS = "1125899906842623"
EVERYONE_PERMISSIONS = "1071698660929"


class Payloads:
    """Builds users, members, the guild, messages and interactions from the emulator's state."""

    def __init__(self, emu: DiscordEmulator) -> None:
        self.emu = emu

    def member(self, user: User) -> dict[str, Any]:
        return {
            "user": user.to_json(),
            "roles": [],
            "joined_at": user.joined_at,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "permissions": ALL_PERMISSIONS,
        }

    def channel(self) -> dict[str, Any]:
        emu = self.emu
        last = [m.id for m in emu._messages.values() if m.channel_id == emu.channel_id and not m.ephemeral]
        return {
            "id": str(emu.channel_id),
            "type": 0,
            "guild_id": str(emu.guild_id),
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": str(last[-1]) if last else None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }

    def guild_create(self) -> dict[str, Any]:
        emu = self.emu
        members = [self.member(u) for u in emu._users.values()]
        return {
            "id": str(emu.guild_id),
            "name": emu.guild_name,
            "owner_id": str(emu.default_user.id),
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": [
                {
                    "id": str(emu.guild_id),
                    "name": "@everyone",
                    "permissions": EVERYONE_PERMISSIONS,
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "channels": [self.channel()],
            "threads": [],
            "members": members,
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "member_count": len(members),
            "large": False,
            "unavailable": False,
            "joined_at": emu.bot_user.joined_at,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "afk_timeout": 300,
            "afk_channel_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "max_members": 500000,
        }

    def ready(self, session_id: str) -> dict[str, Any]:
        emu = self.emu
        user = emu.bot_user.to_json() | {"verified": True, "mfa_enabled": False}
        return {
            "v": 10,
            "user": user,
            "session_id": session_id,
            "resume_gateway_url": emu.gateway_url,
            "guilds": [{"id": str(emu.guild_id), "unavailable": True}],
            "application": {"id": str(emu.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "shard": [0, 1],
        }

    def application(self) -> dict[str, Any]:
        emu = self.emu
        return {
            "id": str(emu.application_id),
            "name": emu.bot_user.username,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": emu.default_user.to_json(),
            "team": None,
            "verify_key": "0" * 64,
            "flags": 0,
            "interactions_endpoint_url": None,
            "rpc_origins": [],
            "tags": [],
            "bot": emu.bot_user.to_json(),
        }

    def message(self, msg: Message) -> dict[str, Any]:
        emu = self.emu
        author = emu._users[msg.author_id]
        out: dict[str, Any] = {
            "id": str(msg.id),
            "channel_id": str(msg.channel_id),
            "guild_id": str(emu.guild_id),
            "author": author.to_json(),
            "content": msg.content,
            "timestamp": emu.clock.iso(msg.created_at),
            "edited_timestamp": emu.clock.iso(msg.edited_at) if msg.edited_at is not None else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [a.to_json() for a in msg.attachments],
            "embeds": msg.embeds,
            "components": msg.components,
            "pinned": False,
            "type": msg.type,
            "flags": msg.flags,
        }
        if msg.message_reference is not None:
            out["message_reference"] = msg.message_reference
        if msg.interaction_id is not None:
            ix = emu._interactions[msg.interaction_id]
            out["webhook_id"] = str(emu.application_id)
            out["application_id"] = str(emu.application_id)
            out["interaction_metadata"] = {
                "id": str(ix.id),
                "type": ix.type,
                "user": emu._users[ix.user_id].to_json(),
                "authorizing_integration_owners": {"0": str(emu.guild_id)},
            }
        if not msg.flags & EPHEMERAL:
            out["member"] = self.member(author)
        return out

    def interaction(self, ix: Interaction, data: dict[str, Any]) -> dict[str, Any]:
        emu = self.emu
        user = emu._users[ix.user_id]
        out: dict[str, Any] = {
            "id": str(ix.id),
            "application_id": str(emu.application_id),
            "type": ix.type,
            "token": ix.token,
            "version": 1,
            "guild_id": str(emu.guild_id),
            "channel_id": str(ix.channel_id),
            "channel": self.channel(),
            "guild": {"id": str(emu.guild_id), "locale": "en-US", "features": []},
            "member": self.member(user),
            "data": data,
            "app_permissions": ALL_PERMISSIONS,
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(emu.guild_id)},
            "context": 0,
            "attachment_size_limit": ix.attachment_size_limit,
        }
        if ix.message_id is not None:
            out["message"] = self.message(emu._messages[ix.message_id])
        return out
