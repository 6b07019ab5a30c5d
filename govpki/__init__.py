"""Shared base of govpki: configuration, database base, errors, clock and audit chain.

Kept deliberately small; domain logic lives in keymgmt, ca, ra and authz.
"""

__version__ = "0.1.0"
