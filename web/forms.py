"""Portal forms (Flask-WTF: every form carries a CSRF token).

Labels and messages are English msgids translated lazily, so a form built
once renders in the language of the request that shows it.
"""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import IntegerField, PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, EqualTo, InputRequired, Length, NumberRange

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


class StaffForm(FlaskForm):  # type: ignore[misc]
    """A new RA staff account (a security administrator fills it in)."""

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
    role = SelectField(
        _l("Role"),
        choices=[
            SelectChoice("ra_clerk", _l("RA clerk (registers, submits)")),
            SelectChoice("ra_officer", _l("RA officer (approves)")),
        ],
        validators=[DataRequired(_l("Choose a role."))],
    )
    prefecture = SelectField(_l("Prefecture"), validators=[DataRequired(_l("Choose a prefecture."))])
