"""Code lists (kodeverk) used around MsgHead and AppRec, as data with their display texts.

The OID of Helsedirektoratet code system NNNN is 2.16.578.1.12.4.1.1.NNNN. Display texts are
the code lists' own Norwegian texts; the gateway shows them beside its English explanations.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

OID_PREFIX = "2.16.578.1.12.4.1.1."


@dataclass(frozen=True)
class CodeList:
    number: int
    name: str
    codes: dict[str, str] = field(hash=False)

    @property
    def oid(self) -> str:
        return f"{OID_PREFIX}{self.number}"

    def text(self, code: str) -> str:
        return self.codes.get(code, "")

    def __contains__(self, code: object) -> bool:
        return code in self.codes


MESSAGE_FUNCTION = CodeList(
    8279,
    "Meldingens funksjon",
    {
        "APPREC": "Applikasjonskvittering",
        "DIALOG_FORESPORSEL": "Forespørsel",
        "DIALOG_SVAR": "Svar på forespørsel",
        "DIALOG_NOTAT": "Notat",
        "DIALOG_AVVIK": "Tilbakemelding om feil i mottatt melding",
        "DIALOG_HELSEFAGLIG": "Helsefaglig dialog",
        "DIALOG_STATUS_HENVISNING": "Status på henvisning",
        "DIALOG_OVERFORING_JOURNAL": "Overføring av journal",
        "DIALOG_TIL_ARKIVERING": "Til arkivering",
        "DIALOG_FORSIKRING": "Forsikring",
        "DIALOG": "EPJhode - dialog",
        "EPIKRISE": "Epikrise",
        "FODSELS_EPIKRISE": "Fødselsepikrise",
        "HENVISNING": "Henvisning",
        "HENVISNING_NYTILSTAND": "Henvisning ny tilstand",
        "HENVISNING_VIDERE": "Viderehenvisning",
        "HENVISNING_BUP": "Henvisning til BUP",
        "HENVISNING_REHAB": "Henvisning til rehabiliteringsinstitusjon",
        "TILBAKEMELD": "Tilbakemelding på henvisning",
        "REQ_LAB": "Rekvisisjon laboratoriemedisin",
        "REQ_MBIO": "Rekvisisjon mikrobiologi",
        "REQ_HIST": "Rekvisisjon histologi",
        "REQ_CYT": "Rekvisisjon cytologi",
        "REQ_KKL": "Rekvisisjon klinisk kjemi",
        "REQ_RTG": "Rekvisisjon radiologi",
        "SVAR_LAB": "Svarrapport laboratoriemedisin",
        "SVAR_MBIO": "Svarrapport mikrobiologi",
        "SVAR_HIST": "Svarrapport histologi",
        "SVAR_CYT": "Svarrapport cytologi",
        "SVAR_KKL": "Svarrapport klinisk kjemi",
        "SVAR_RTG": "Svarrapport radiologi",
        "BEKREFT_REKVISISJON": "Bekreftelse på rekvirert tjeneste",
        "STATUS_REKVISISJON": "Status på rekvirert tjeneste",
        "INNLEGGELSESRAPPORT": "Innleggelsesrapport",
        "UTSKRIVNINGSRAPPORT": "Utskrivningsrapport",
        "HELSEOPPL_SOKNAD": "Helseopplysninger",
        "HELSEOPPLYSNINGER_LEGE": "Helseopplysninger til lege",
        "MEDISINSKE_OPPLYSNINGER": "Medisinske opplysninger",
        "ORIENTERING_TJENESTETILBUD": "Orientering om tjenestetilbud",
        "TVERRFAGLIG_EPIKRISE": "Tverrfaglig epikrise",
        "LEGEMIDDELHANDTERING": "Legemiddelhåndtering",
        "PASIENTLOGISTIKK": "Pasientlogistikk",
        "LOG_INNLAGT": "Melding om innlagt pasient",
        "LOG_UTSKRIVNINGSKLAR": "Melding om utskrivningsklar pasient",
        "LOG_AVMELDING": "Avmelding av utskrivningsklar pasient",
        "LOG_UTSKREVET": "Melding om utskrevet pasient",
        "LOG_DOD": "Orientering om dødsfall",
        "FRAVARSMELDING": "Fraværsmelding",
        "KONSULTASJON": "Konsultasjon hos lege",
        "EPJ-EKSTRAKT": "Kommunikasjon av EPJ-innhold",
        "IPLOS_TILBAKEMELDING": "Tilbakemelding ved IPLOS-rapportering",
        "HODE_FOLGEBREV": "Følgebrev",
        "PATIENT_FROM": "Melding fra pasient",
        "PATIENT_TO": "Melding til pasient",
        "SYKMELD": "Sykmelding",
        "LEGEERKL": "Legeerklæring",
        "PASIENTREISE": "Pasientreise",
        "BIVIRKNING": "Bivirkningsmelding",
        "EBREV": "eBrev",
    },
)

APPREC_STATUS_LIST = CodeList(
    8258, "Status for mottak av melding", {"1": "OK", "2": "Avvist", "3": "OK, feil i delmelding"}
)

APPREC_ERRORS = CodeList(
    8221,
    "Feilmeldinger for applikasjonskvittering - generelle",
    {
        "T01": "Ikke XML / ikke 'well formed' / uleselig",
        "T02": "XML validerer ikke",
        "T10": "Meldingsformatet er ikke støttet",
        "T99": "Annen feil på format",
        "S01": "Feil på signatur",
        "S02": "Ugyldig sertifikat",
        "S03": "Tilbaketrukket sertifikat",
        "S99": "Annen feil på signatur eller sertifikat",
        "E10": "Ugyldig meldingsidentifikator",
        "E20": "Lege finnes ikke",
        "E21": "Mottaker finnes ikke",
        "E30": "Pasientens fødselsnummer mangler",
        "E31": "Pasientens fødselsnummer er feil",
        "E32": "Pasientens navn mangler",
        "E35": "Pasienten finnes ikke i mottakersystemet",
        "E36": "Pasientopplysninger er mangelfulle",
        "E53": "Fødselsnummer/D-nummer finnes ikke i Folkeregisteret",
        "E54": "Fødselsnummer er ikke registrert i mottakersystemet",
        "X99": "Annen feil",
    },
)

ORGANISATION_ID_TYPES = CodeList(
    9051,
    "ID-typer for organisatoriske enheter",
    {
        "HER": "HER-id",
        "ENH": "Organisasjonsnummeret i Enhetsregisteret",
        "RSH": "RESH-id",
        "NPR": "Avdelingsnummer i NPR",
        "SYS": "SYSVAK-id",
        "APO": "Apotekkonsesjonsnummer",
        "AKO": "Apotekkonsesjonsnummer",
        "AVD": "Offentlig avdelingsidentifikator",
        "LIN": "Lokal identifikator for institusjoner",
        "LAV": "Lokal identifikator for avdelinger",
        "LOK": "Lokal identifikator",
    },
)

PERSON_ID_TYPES = CodeList(
    8116,
    "ID-type for personer",
    {
        "FNR": "Fødselsnummer",
        "DNR": "D-nummer",
        "HNR": "H-nummer",
        "HPR": "HPR-nummer",
        "HER": "HER-id",
        "PNR": "Passnummer",
        "DUF": "DUF-nummer",
        "FHN": "Felles hjelpenummer",
        "SEF": "Svensk personnummer",
        "DKF": "Dansk personnummer",
        "SSN": "Sosial security number",
        "FPN": "Forsikringspolise nummer",
        "UID": "Utenlandsk identifikasjon",
        "XXX": "Annet",
    },
)

SHIPMENT_STATUS = CodeList(
    7309,
    "Forsendelsesstatus",
    {"N": "Ny", "M": "Endring", "C": "Kansellering", "A": "Tillegg", "H": "Historikk"},
)

RECEIVER_ROLES = CodeList(
    8112,
    "Rolle til mottaker",
    {"PRIM": "Primærmottaker", "COP": "Kopimottaker", "FR": "Videresendt", "OR": "Opprinnelig"},
)

CODE_LISTS = {
    c.number: c
    for c in (
        MESSAGE_FUNCTION,
        APPREC_STATUS_LIST,
        APPREC_ERRORS,
        ORGANISATION_ID_TYPES,
        PERSON_ID_TYPES,
        SHIPMENT_STATUS,
        RECEIVER_ROLES,
    )
}


class ErrorCode(enum.StrEnum):
    """AppRec error codes (kodeverk 8221) the gateway itself emits or reads."""

    T01 = "T01"
    T02 = "T02"
    T10 = "T10"
    T99 = "T99"
    S01 = "S01"
    S02 = "S02"
    S03 = "S03"
    S99 = "S99"
    E10 = "E10"
    E20 = "E20"
    E21 = "E21"
    E30 = "E30"
    E31 = "E31"
    E32 = "E32"
    E35 = "E35"
    E36 = "E36"
    X99 = "X99"

    @property
    def text(self) -> str:
        return APPREC_ERRORS.text(self.value)


class AppRecStatus(enum.StrEnum):
    """Kodeverk 8258."""

    OK = "1"
    REJECTED = "2"
    OK_ERROR_IN_PART = "3"

    @property
    def text(self) -> str:
        return APPREC_STATUS_LIST.text(self.value)


class ReceiverRole(enum.StrEnum):
    """Kodeverk 8112."""

    PRIMARY = "PRIM"
    COPY = "COP"
    FORWARDED = "FR"
    ORIGINAL = "OR"

    @property
    def text(self) -> str:
        return RECEIVER_ROLES.text(self.value)


class ShipmentStatus(enum.StrEnum):
    """Kodeverk 7309 (PLO Forsendelsesstatus)."""

    NEW = "N"
    CHANGE = "M"
    CANCEL = "C"
    ADDITION = "A"
    HISTORY = "H"

    @property
    def text(self) -> str:
        return SHIPMENT_STATUS.text(self.value)
