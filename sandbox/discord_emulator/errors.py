"""Discord error bodies and the exception the route handlers raise to answer with one."""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error answer: HTTP status plus Discord's ``{"code", "message", "errors"}`` body.

    ``rule`` names the Discord rule that was broken; when ``violation`` is true the emulator records the request
    in ``DiscordEmulator.violations``.
    """

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: dict[str, Any] | None = None,
        rule: str = "",
        violation: bool = True,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.rule = rule or message
        self.violation = violation

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors is not None:
            data["errors"] = self.errors
        return data


def field_error(path: str, code: str, message: str) -> dict[str, Any]:
    """Build Discord's nested ``errors`` object for one field path like ``components.0.components.1.custom_id``."""
    leaf: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(path.split(".")):
        leaf = {part: leaf}
    return leaf


def invalid_form_body(path: str, code: str, message: str, rule: str) -> APIError:
    """400 50035 Invalid Form Body for one field."""
    return APIError(400, 50035, "Invalid Form Body", errors=field_error(path, code, message), rule=rule)


def unknown_message(rule: str = "message does not exist") -> APIError:
    return APIError(404, 10008, "Unknown Message", rule=rule)


def unknown_interaction(rule: str) -> APIError:
    return APIError(404, 10062, "Unknown interaction", rule=rule)


def invalid_webhook_token(rule: str) -> APIError:
    return APIError(401, 50027, "Invalid Webhook Token", rule=rule)
