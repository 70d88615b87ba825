"""The lobby's refusals, each a stable code on top of the shared error tree.

    Forbidden (403, forbidden)
    └── WrongDevice (403, wrong_device)      a session signal from a device that may not send it now
    Conflict (409, conflict)
    ├── WrongStep (409, wrong_step)          a session signal the current step does not expect
    └── SessionMismatch (409, session_mismatch)  a signal naming another session, lobby or speaker
"""

from __future__ import annotations

from sonalyze.common.errors import BadRequest, Conflict, Forbidden, NotFound

__all__ = ["BadRequest", "Conflict", "Forbidden", "NotFound", "SessionMismatch", "WrongDevice", "WrongStep"]


class WrongDevice(Forbidden):
    code = "wrong_device"


class WrongStep(Conflict):
    code = "wrong_step"


class SessionMismatch(Conflict):
    code = "session_mismatch"
