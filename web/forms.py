"""Portal forms (Flask-WTF: every form carries a CSRF token).

Labels and messages are English msgids translated lazily, so a form built
once renders in the language of the request that shows it.
"""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (
    IntegerField,
    PasswordField,
    RadioField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, InputRequired, Length, NumberRange, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from authz.applications import MAX_REDIRECT_URIS, MAX_URI
from authz.services import MIN_PASSWORD

MAX_PASSWORD = 256


class LoginForm(FlaskForm):  # type: ignore[misc]
    username = StringField(
        _l("User name"),
        validators=[DataRequired(_l("Enter your user name.")), Length(max=64, message=_l("At most 64 characters."))],
        render_kw={"autocomplete": "username", "autocapitalize": "none", "spellcheck": "false", "autofocus": True},
    )
    password = PasswordField(
        _l("Password"),
        validators=[
            DataRequired(_l("Enter your password.")),
            Length(max=MAX_PASSWORD, message=_l("At most 256 characters.")),
        ],
        render_kw={"autocomplete": "current-password"},
    )


class PasswordForm(FlaskForm):  # type: ignore[misc]
    current_password = PasswordField(
        _l("Current password"),
        validators=[DataRequired(_l("Enter your current password."))],
        render_kw={"autocomplete": "current-password", "autofocus": True},
    )
    new_password = PasswordField(
        _l("New password"),
        validators=[
            DataRequired(_l("Enter a new password.")),
            Length(max=MAX_PASSWORD, message=_l("At most 256 characters.")),
        ],
        render_kw={"autocomplete": "new-password", "minlength": MIN_PASSWORD},
    )
    repeat_password = PasswordField(
        _l("Repeat the new password"),
        validators=[
            DataRequired(_l("Repeat the new password.")),
            EqualTo("new_password", message=_l("The two new passwords differ.")),
        ],
        render_kw={"autocomplete": "new-password"},
    )


class TokenForm(FlaskForm):  # type: ignore[misc]
    name = StringField(
        _l("Token name"),
        validators=[
            DataRequired(_l("Enter a name for the token.")),
            Length(max=64, message=_l("At most 64 characters.")),
        ],
        description=_l("Letters, digits, '.', '_' or '-', e.g. urumqi-ra-gateway."),
        render_kw={"autocomplete": "off", "spellcheck": "false"},
    )
    days = IntegerField(
        _l("Valid for (days)"),
        validators=[
            InputRequired(_l("Enter a number of days.")),
            NumberRange(min=1, max=366, message=_l("Between 1 and 366 days.")),
        ],
        render_kw={"min": 1, "max": 366},
    )


class ActionForm(FlaskForm):  # type: ignore[misc]
    """A form with nothing but its CSRF token: sign-out and revoke buttons."""


class TotpForm(FlaskForm):  # type: ignore[misc]
    """The 6-digit code of the authenticator app (second sign-in step, and enrolment)."""

    code = StringField(
        _l("Code from your authenticator app"),
        validators=[DataRequired(_l("Enter the 6-digit code.")), Length(max=16, message=_l("At most 16 characters."))],
        render_kw={
            "autocomplete": "one-time-code",
            "inputmode": "numeric",
            "spellcheck": "false",
            "autofocus": True,
            "maxlength": 16,
        },
    )


class _NewAccountForm(FlaskForm):  # type: ignore[misc]
    """The user name and full name every new account form asks for (its role field follows)."""

    username = StringField(
        _l("User name"),
        validators=[DataRequired(_l("Enter your user name.")), Length(max=64, message=_l("At most 64 characters."))],
        description=_l("3 to 64 lower-case letters, digits, '.', '_' or '-', starting with a letter."),
        render_kw={"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"},
    )
    display_name = StringField(
        _l("Full name"),
        validators=[DataRequired(_l("Enter the full name.")), Length(max=128, message=_l("At most 128 characters."))],
        render_kw={"autocomplete": "off"},
    )


class StaffForm(_NewAccountForm):
    """A new RA staff account (a security administrator fills it in)."""

    role = SelectField(
        _l("Role"),
        choices=[
            SelectChoice("ra_clerk", _l("RA clerk (registers, submits)")),
            SelectChoice("ra_officer", _l("RA officer (approves)")),
        ],
        validators=[DataRequired(_l("Choose a role."))],
    )
    prefecture = SelectField(_l("Prefecture"), validators=[DataRequired(_l("Choose a prefecture."))])


class AccountForm(_NewAccountForm):
    """A new account of a role other than RA staff (a system administrator fills it in)."""

    role = SelectField(
        _l("Role"),
        choices=[
            SelectChoice("system_admin", _l("System administrator (accounts and configuration)")),
            SelectChoice("security_admin", _l("Security administrator (CAs, RAs, keys, policies, applications)")),
            SelectChoice("security_auditor", _l("Security auditor (reads the audit log)")),
            SelectChoice("ca_operator", _l("CA operator")),
            SelectChoice("key_recovery_officer", _l("Key-recovery officer")),
        ],
        validators=[DataRequired(_l("Choose a role."))],
    )


# what each scope lets an application do (the service's KNOWN_SCOPES, authz/applications.py)
SCOPE_CHOICES = [
    SelectChoice("audit:write", _l("audit:write — append its own events to the audit log")),
    SelectChoice("authz:decide", _l("authz:decide — ask for access decisions about itself")),
    SelectChoice("authz:decide:any", _l("authz:decide:any — ask for access decisions about any application")),
    SelectChoice("openid", _l("openid — sign users in (OpenID Connect)")),
    SelectChoice("profile", _l("profile — the user's name in the ID token")),
    SelectChoice("offline_access", _l("offline_access — refresh tokens")),
]
# the URI text areas: every URI at its longest, one a line
MAX_URI_TEXT = MAX_REDIRECT_URIS * (MAX_URI + 2)
MAX_CERTIFICATE_TEXT = 65536


class ApplicationForm(FlaskForm):  # type: ignore[misc]
    """A new registered application (OAuth / OIDC client); the service checks every value."""

    name = StringField(
        _l("Application name"),
        validators=[
            DataRequired(_l("Enter a name for the application.")),
            Length(max=48, message=_l("At most 48 characters.")),
        ],
        description=_l("3 to 48 lower-case letters, digits or '-', starting with a letter, e.g. oa-system."),
        render_kw={"autocomplete": "off", "autocapitalize": "none", "spellcheck": "false"},
    )
    # the service checks the type and the scopes (validate_choice off): its reasons are the ones shown
    client_type = RadioField(
        _l("Client type"),
        choices=[
            SelectChoice("confidential", _l("Confidential (a server: has a client secret)")),
            SelectChoice("public", _l("Public (a browser or native app: no secret, must use PKCE)")),
        ],
        default="confidential",
        validate_choice=False,
        widget=ListWidget(prefix_label=False),
    )
    scopes = SelectMultipleField(
        _l("Scopes"),
        choices=SCOPE_CHOICES,
        validate_choice=False,
        widget=ListWidget(prefix_label=False),
        option_widget=CheckboxInput(),
    )
    redirect_uris = TextAreaField(
        _l("Redirect URIs"),
        validators=[Optional(), Length(max=MAX_URI_TEXT, message=_l("Too long."))],
        description=_l(
            "OpenID Connect clients only. One exact URI per line: https (http only on 127.0.0.1 or localhost), "
            "no fragment."
        ),
        render_kw={"rows": 3, "spellcheck": "false", "placeholder": "https://oa.example.gov.cn/oidc/callback"},
    )
    post_logout_redirect_uris = TextAreaField(
        _l("Post-logout redirect URIs"),
        validators=[Optional(), Length(max=MAX_URI_TEXT, message=_l("Too long."))],
        description=_l("Optional. One exact URI per line, where the user returns after signing out."),
        render_kw={"rows": 2, "spellcheck": "false"},
    )


class ApplicationEditForm(FlaskForm):  # type: ignore[misc]
    """An application's scopes and URIs (its name and type never change); the same fields
    as registration, checked by the same service code."""

    scopes = ApplicationForm.scopes
    redirect_uris = ApplicationForm.redirect_uris
    post_logout_redirect_uris = ApplicationForm.post_logout_redirect_uris


class CertificateForm(FlaskForm):  # type: ignore[misc]
    """An application's TLS client certificate, as a file or pasted (PEM)."""

    certificate_file = FileField(_l("Certificate file"), description=_l("PEM or DER (.pem, .crt, .cer, .der)."))
    certificate_text = TextAreaField(
        _l("Or paste the certificate"),
        validators=[Optional(), Length(max=MAX_CERTIFICATE_TEXT, message=_l("At most 65536 characters."))],
        render_kw={"rows": 8, "spellcheck": "false", "placeholder": "-----BEGIN CERTIFICATE-----"},
    )
