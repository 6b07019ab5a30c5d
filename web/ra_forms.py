"""Forms of the RA clerk portal (Flask-WTF: every form carries a CSRF token). The forms
only check presence and length; the services check everything else and their errors
are shown next to the field they name."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional

MAX_TEXT = 64
MAX_NOTE = 2000
MAX_CSR_TEXT = 65536


class OfficialForm(FlaskForm):  # type: ignore[misc]
    name = StringField(
        _l("Full name"),
        validators=[DataRequired(_l("Enter the name.")), Length(max=MAX_TEXT, message=_l("At most 64 characters."))],
        render_kw={"autocomplete": "off"},
    )
    id_number = StringField(
        _l("Resident ID number"),
        validators=[DataRequired(_l("Enter the 18-character resident ID number."))],
        description=_l("18 characters (GB 11643); the gender is derived from it. Stored encrypted, shown masked."),
        render_kw={"autocomplete": "off", "spellcheck": "false", "maxlength": 32, "inputmode": "text"},
    )
    department = StringField(
        _l("Department"),
        validators=[
            DataRequired(_l("Enter the department.")),
            Length(max=MAX_TEXT, message=_l("At most 64 characters.")),
        ],
    )
    title = StringField(
        _l("Title"), validators=[Optional(), Length(max=MAX_TEXT, message=_l("At most 64 characters."))]
    )
    phone = StringField(_l("Phone"), validators=[Optional(), Length(max=32, message=_l("At most 32 characters."))])
    email = StringField(
        _l("E-mail"),
        validators=[Optional(), Length(max=254, message=_l("At most 254 characters."))],
        description=_l("Goes into the certificates; expiry notices are sent to it."),
        render_kw={"type": "email", "spellcheck": "false"},
    )


class ServiceForm(FlaskForm):  # type: ignore[misc]
    name = StringField(
        _l("Service name"),
        validators=[DataRequired(_l("Enter the name.")), Length(max=MAX_TEXT, message=_l("At most 64 characters."))],
    )
    department = StringField(
        _l("Owning department"),
        validators=[
            DataRequired(_l("Enter the department.")),
            Length(max=MAX_TEXT, message=_l("At most 64 characters.")),
        ],
    )
    host_names = TextAreaField(
        _l("Host names"),
        validators=[Optional(), Length(max=4000, message=_l("At most 4000 characters."))],
        description=_l("One per line, e.g. www.czj.example.gov.cn."),
        render_kw={"rows": 3, "spellcheck": "false"},
    )
    ip_addresses = TextAreaField(
        _l("IP addresses"),
        validators=[Optional(), Length(max=4000, message=_l("At most 4000 characters."))],
        description=_l("One per line."),
        render_kw={"rows": 2, "spellcheck": "false"},
    )
    # the choices are the prefecture's officials (web.ra_portal.service_new) and "—" (none yet: refused here)
    responsible_official_id = SelectField(
        _l("Responsible official"), coerce=str, validators=[DataRequired(_l("This field is required."))]
    )


class CsrForm(FlaskForm):  # type: ignore[misc]
    """A new certificate: the subscriber's CSR as a file or pasted."""

    csr_file = FileField(_l("CSR file"), description=_l("PEM or DER (.csr, .req, .pem)."))
    csr_text = TextAreaField(
        _l("Or paste the CSR"),
        validators=[Optional(), Length(max=MAX_CSR_TEXT, message=_l("At most 65536 characters."))],
        render_kw={"rows": 8, "spellcheck": "false", "placeholder": "-----BEGIN CERTIFICATE REQUEST-----"},
    )
    profile = SelectField(
        _l("Profile"),
        choices=[
            SelectChoice("service-tls-server", _l("TLS server (service-tls-server)")),
            SelectChoice("service-tls-client", _l("TLS client (service-tls-client)")),
        ],
    )
    note = TextAreaField(
        _l("Note"),
        validators=[Optional(), Length(max=MAX_NOTE, message=_l("At most 2000 characters."))],
        render_kw={"rows": 2},
    )


REASONS = [
    SelectChoice("unspecified", _l("Unspecified")),
    SelectChoice("keyCompromise", _l("Key compromise")),
    SelectChoice("affiliationChanged", _l("Affiliation changed")),
    SelectChoice("superseded", _l("Superseded")),
    SelectChoice("cessationOfOperation", _l("Cessation of operation")),
    SelectChoice("privilegeWithdrawn", _l("Privilege withdrawn")),
]


class ChangeForm(FlaskForm):  # type: ignore[misc]
    """Renewal, suspension, resumption or revocation of a certificate."""

    kind = SelectField(
        _l("Request"),
        choices=[
            SelectChoice("renew", _l("Renewal")),
            SelectChoice("suspend", _l("Suspension")),
            SelectChoice("resume", _l("Resumption")),
            SelectChoice("revoke", _l("Revocation")),
        ],
    )
    reason = SelectField(_l("Revocation reason"), choices=REASONS)
    csr_file = FileField(_l("New CSR (renewal with a new key)"))
    csr_text = TextAreaField(
        _l("Or paste the new CSR"),
        validators=[Optional(), Length(max=MAX_CSR_TEXT, message=_l("At most 65536 characters."))],
        render_kw={"rows": 6, "spellcheck": "false", "placeholder": "-----BEGIN CERTIFICATE REQUEST-----"},
    )
    note = TextAreaField(
        _l("Note"),
        validators=[Optional(), Length(max=MAX_NOTE, message=_l("At most 2000 characters."))],
        render_kw={"rows": 2},
    )


class DecisionForm(FlaskForm):  # type: ignore[misc]
    comment = TextAreaField(
        _l("Comment"),
        validators=[Optional(), Length(max=MAX_NOTE, message=_l("At most 2000 characters."))],
        render_kw={"rows": 2},
    )


class ImportForm(FlaskForm):  # type: ignore[misc]
    file = FileField(
        _l("CSV file of officials"),
        description=_l(
            "UTF-8 (with or without BOM) or GB18030. Header row: 姓名/name, 身份证号/id_number, "
            "部门/department (required); 职务/title, 电话/phone, 邮箱/email (optional)."
        ),
        render_kw={"accept": ".csv,text/csv"},
    )
