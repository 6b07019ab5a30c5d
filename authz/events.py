"""Audit tags of the authorization domain."""

from __future__ import annotations

import enum


class AuthzEvent(enum.StrEnum):
    ACCOUNT_CREATE = "authz:account:create"
    ACCOUNT_ROLE_CHANGE = "authz:account:role_change"
    SIGN_IN = "authz:session:sign_in"
    SIGN_IN_FAIL = "authz:session:sign_in_fail"  # a wrong password or TOTP code (details.factor), or locked;
    # a refused client certificate (details.method "certificate", details.code)
    # a certificate session ended because its certificate stopped being good (details.reason)
    SESSION_END = "authz:session:end"
    ACCOUNT_LOCK = "authz:account:lock"
    ACCOUNT_UNLOCK = "authz:account:unlock"
    # an official's password + TOTP sign-in (authz/official_signin.py): set up (name, password,
    # a new TOTP secret), enabled by a confirmed code, password changed, turned off by the
    # official, reset by an RA officer of the official's prefecture
    OFFICIAL_SIGNIN_SET_UP = "authz:official:signin_set_up"
    OFFICIAL_SIGNIN_ENABLE = "authz:official:signin_enable"
    OFFICIAL_PASSWORD_CHANGE = "authz:official:change_password"
    OFFICIAL_SIGNIN_DISABLE = "authz:official:signin_disable"
    OFFICIAL_SIGNIN_RESET = "authz:official:signin_reset"
    TOTP_ENROL = "authz:account:totp_enrol"
    TOTP_RESET = "authz:account:totp_reset"
    PASSWORD_CHANGE = "authz:account:change_password"
    TOKEN_CREATE = "authz:token:create"
    TOKEN_REVOKE = "authz:token:revoke"
    AUDIT_EXPORT = "authz:audit:export"
    APPLICATION_REGISTER = "authz:application:register"
    APPLICATION_DISABLE = "authz:application:disable"
    APPLICATION_ENABLE = "authz:application:enable"  # a disabled application re-enabled (details.tokens_revoked)
    APPLICATION_UPDATE = "authz:application:update"  # scopes / redirect URIs changed (details.before, .after)
    APPLICATION_SECRET_ROTATE = "authz:application:secret_rotate"  # a new client secret (never in the details)
    # mutual TLS (authz/certlogin.py): a certificate bound to an application, or its binding removed
    APPLICATION_BIND_CERT = "authz:application:bind_certificate"
    APPLICATION_UNBIND_CERT = "authz:application:unbind_certificate"
    # the access-decision policy (authz/policy.py)
    POLICY_SUBJECT_SET = "authz:policy:subject_set"
    POLICY_ROLE_CREATE = "authz:policy:role_create"
    POLICY_ROLE_DELETE = "authz:policy:role_delete"
    POLICY_PERMISSION_ADD = "authz:policy:permission_add"
    POLICY_PERMISSION_REMOVE = "authz:policy:permission_remove"
    POLICY_ASSIGNMENT_CREATE = "authz:policy:assignment_create"
    POLICY_ASSIGNMENT_DELETE = "authz:policy:assignment_delete"
    POLICY_LOAD = "authz:policy:load"
    # the OpenID Connect provider (authz/oidc.py)
    OIDC_TOKEN_ISSUE = "authz:oidc_token:issue"  # an authorization code exchanged: tokens for a user and a client
    OIDC_TOKEN_REFRESH = "authz:oidc_token:refresh"
    OIDC_TOKEN_REVOKE = "authz:oidc_token:revoke"  # RFC 7009, by the client
    OIDC_CODE_REPLAY = "authz:oidc_code:replay"  # a used code presented again: its tokens revoked
    OIDC_REFRESH_REUSE = "authz:oidc_token:reuse"  # a rotated refresh token presented again: its family revoked
    OIDC_LOGOUT = "authz:oidc_session:logout"  # RP-initiated logout
    OIDC_KEY_ROTATE = "authz:oidc_key:rotate"  # `govpki oidc rotate` (the key record's own entries beside it)
