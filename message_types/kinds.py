"""Which document is this? Recognition by root namespace, and the MsgInfo/Type -> content table.

A gateway must look at the root namespace, not only at MsgHead: AppRec, Epikrise, Henvisning 1.x,
Svarrapport and Rekvisisjon travel as their own root documents (standards.md §3, §6).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Family(enum.StrEnum):
    MSGHEAD = "MsgHead"
    APPREC = "AppRec"
    DIALOG = "Dialogmelding"
    PLO = "PLO"
    EPIKRISE = "Epikrise"
    HENVISNING = "Henvisning"
    SVAR = "Svarrapport"
    REKVISISJON = "Rekvisisjon"
    BASE64 = "Base64Container"


@dataclass(frozen=True)
class DocumentKind:
    namespace: str
    root: str
    family: Family
    version: str
    title: str
    # Standalone documents carry their own message function; MsgHead content does not.
    standalone: bool = False


MSGHEAD_NS = "http://www.kith.no/xmlstds/msghead/2006-05-24"
APPREC_10_NS = "http://www.kith.no/xmlstds/apprec/2004-11-21"
APPREC_11_NS = "http://www.kith.no/xmlstds/apprec/2012-02-15"
DIALOG_10_NS = "http://www.kith.no/xmlstds/dialog/2006-10-11"
DIALOG_11_NS = "http://www.kith.no/xmlstds/dialog/2013-01-23"
BASE64_NS = "http://www.kith.no/xmlstds/base64container"
XMLDSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
PLO_16_PO_NS = "http://www.kith.no/xmlstds/po/poKomponent/2012-04-01"
PLO_15_PO_NS = "http://www.kith.no/xmlstds/po/poKomponent/2009-06-30"

_PLO = "http://www.kith.no/xmlstds/po/"


def _plo(name: str, root: str, version: str, title: str) -> DocumentKind:
    date = "2012-04-01" if version == "1.6" else "2009-06-30"
    return DocumentKind(f"{_PLO}{name}/{date}", root, Family.PLO, version, title)


KINDS: tuple[DocumentKind, ...] = (
    DocumentKind(MSGHEAD_NS, "MsgHead", Family.MSGHEAD, "1.2", "Hodemelding 1.2"),
    DocumentKind(APPREC_10_NS, "AppRec", Family.APPREC, "1.0", "Applikasjonskvittering 1.0", True),
    DocumentKind(APPREC_11_NS, "AppRec", Family.APPREC, "1.1", "Applikasjonskvittering 1.1", True),
    DocumentKind(DIALOG_10_NS, "Dialogmelding", Family.DIALOG, "1.0", "Dialogmelding 1.0"),
    DocumentKind(DIALOG_11_NS, "Dialogmelding", Family.DIALOG, "1.1", "Dialogmelding 1.1"),
    DocumentKind(BASE64_NS, "Base64Container", Family.BASE64, "1.0", "Base64-container (vedlegg)"),
    *(
        _plo(name, root, version, title)
        for version in ("1.5", "1.6")
        for name, root, title in (
            ("Innleggelsesrapport", "Innleggelsesrapport", "Innleggelsesrapport"),
            ("HelseopplysningerVedSoknad", "HelseopplysningerVedSoknad", "Helseopplysninger"),
            (
                "HelseopplysningerTilLege" if version == "1.6" else "Konsultasjon",
                "Konsultasjon",
                "Helseopplysninger til lege",
            ),
            (
                "MedisinskeOpplysninger" if version == "1.6" else "OverforingMedisinskeOpplysninger",
                "OverforingMedisinskeOpplysninger",
                "Medisinske opplysninger",
            ),
            ("OrienteringOmTjenestetilbud", "OrienteringOmTjenestetilbud", "Orientering om tjenestetilbud"),
            ("Pasientlogistikk", "Pasientlogistikk", "Pasientlogistikk"),
            ("TverrfagligEpikrise", "TverrfagligEpikrise", "Tverrfaglig epikrise / utskrivningsrapport"),
        )
    ),
    _plo("MeldingFravar", "MeldingFravar", "1.5", "Melding om fravær"),
    DocumentKind(
        "http://www.kith.no/xmlstds/epikrise/2006-09-23",
        "Message",
        Family.EPIKRISE,
        "1.1",
        "Epikrise 1.1",
        True,
    ),
    DocumentKind(
        "http://www.kith.no/xmlstds/epikrise/2012-02-15",
        "Message",
        Family.EPIKRISE,
        "1.2",
        "Epikrise 1.2",
        True,
    ),
    DocumentKind(
        "http://www.kith.no/xmlstds/henvisning/2005-07-08",
        "Message",
        Family.HENVISNING,
        "1.0",
        "Henvisning 1.0",
        True,
    ),
    DocumentKind(
        "http://www.kith.no/xmlstds/henvisning/2012-02-15",
        "Message",
        Family.HENVISNING,
        "1.1",
        "Henvisning 1.1",
        True,
    ),
    DocumentKind(
        "http://ehelse.no/xmlstds/henvisning/2017-11-30",
        "Henvisning",
        Family.HENVISNING,
        "2.0",
        "Henvisning 2.0",
    ),
    DocumentKind(
        "http://www.kith.no/xmlstds/labsvar/2008-12-01",
        "Message",
        Family.SVAR,
        "1.3",
        "Svarrapport 1.3",
        True,
    ),
    DocumentKind(
        "http://www.kith.no/xmlstds/labsvar/2012-02-15",
        "Message",
        Family.SVAR,
        "1.4",
        "Svarrapport 1.4",
        True,
    ),
    DocumentKind(
        "http://www.kith.no/xmlstds/rekvisisjon/2008-12-01",
        "Message",
        Family.REKVISISJON,
        "1.5",
        "Rekvisisjon 1.5",
        True,
    ),
    DocumentKind(
        "http://www.kith.no/xmlstds/rekvisisjon/2012-02-15",
        "Message",
        Family.REKVISISJON,
        "1.6",
        "Rekvisisjon 1.6",
        True,
    ),
)

BY_NAMESPACE: dict[str, DocumentKind] = {k.namespace: k for k in KINDS}


def kind_of(namespace: str | None) -> DocumentKind | None:
    return BY_NAMESPACE.get(namespace or "")


@dataclass(frozen=True)
class ContentRule:
    """What the main document of a MsgHead with this MsgInfo/Type must be.

    `child` names a required child of the content root (the Pasientlogistikk sub-kinds);
    `type_innhold` is the required TypeInnholdIMelding/TypeInnhold code (PLO 1.6 discriminator).
    """

    family: Family
    roots: tuple[str, ...] = ()
    child: str | None = None
    type_innhold: tuple[str, ...] = ()


_DIALOG = ContentRule(Family.DIALOG, ("Dialogmelding",))

CONTENT_RULES: dict[str, ContentRule] = {
    "INNLEGGELSESRAPPORT": ContentRule(Family.PLO, ("Innleggelsesrapport",)),
    "HELSEOPPL_SOKNAD": ContentRule(Family.PLO, ("HelseopplysningerVedSoknad",)),
    "HELSEOPPLYSNINGER_LEGE": ContentRule(Family.PLO, ("Konsultasjon",)),
    "MEDISINSKE_OPPLYSNINGER": ContentRule(Family.PLO, ("OverforingMedisinskeOpplysninger",)),
    "ORIENTERING_TJENESTETILBUD": ContentRule(Family.PLO, ("OrienteringOmTjenestetilbud",)),
    "UTSKRIVNINGSRAPPORT": ContentRule(Family.PLO, ("TverrfagligEpikrise",), type_innhold=("11",)),
    "TVERRFAGLIG_EPIKRISE": ContentRule(Family.PLO, ("TverrfagligEpikrise",)),
    "FRAVARSMELDING": ContentRule(Family.PLO, ("MeldingFravar",)),
    "LOG_INNLAGT": ContentRule(Family.PLO, ("Pasientlogistikk",), child="MeldingInnlagtPasient"),
    "LOG_UTSKRIVNINGSKLAR": ContentRule(
        Family.PLO, ("Pasientlogistikk",), child="MeldingUtskrivningsklarPasient"
    ),
    "LOG_AVMELDING": ContentRule(Family.PLO, ("Pasientlogistikk",), child="AvmeldingUtskrivningsklarPasient"),
    "LOG_UTSKREVET": ContentRule(Family.PLO, ("Pasientlogistikk",), child="MeldingOmUtskrevetPasient"),
    "LOG_DOD": ContentRule(Family.PLO, ("Pasientlogistikk",), child="OrienteringOmDod"),
    "DIALOG_FORESPORSEL": _DIALOG,
    "DIALOG_SVAR": _DIALOG,
    "DIALOG_NOTAT": _DIALOG,
    "DIALOG_AVVIK": _DIALOG,
    "DIALOG_HELSEFAGLIG": _DIALOG,
    "DIALOG_STATUS_HENVISNING": _DIALOG,
    "HENVISNING_NYTILSTAND": ContentRule(Family.HENVISNING, ("Henvisning",)),
    "HENVISNING_VIDERE": ContentRule(Family.HENVISNING, ("Henvisning",)),
}

# Families whose messages are about one patient and must identify them (AppRec standard §3.3).
PATIENT_FAMILIES = frozenset({Family.PLO, Family.DIALOG})
