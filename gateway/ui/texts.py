"""Words the UI shows: plain-Norwegian explanations of AppRec error codes (beside the code list's
own text), and what each state means to an operator."""

from __future__ import annotations

from gateway.lifecycle import ATTENTION_STATES, DeliveryState, MessageState
from message_types.codes import APPREC_ERRORS, APPREC_STATUS_LIST, MESSAGE_FUNCTION

# Kodeverk 8221: what went wrong and who can fix it, in the words an operator at the sending
# side would use on the phone.
EXPLANATIONS = {
    "T01": "Meldingen kunne ikke leses som XML: den er tom, avkortet, har feil tegnsett eller er ikke XML. "
    "Avsendersystemet må lage meldingen på nytt.",
    "T02": "Meldingen følger ikke XML-skjemaet for meldingstypen (elementer mangler, er ukjente, står i feil "
    "rekkefølge eller har ugyldige verdier). Feilen må rettes i avsendersystemet.",
    "T10": "Meldingsformatet eller versjonen støttes ikke. Sjekk hvilke meldingstyper og versjoner mottakeren "
    "har registrert i adresseregisteret.",
    "T99": "Annen feil i meldingsformatet. Se detaljene.",
    "S01": "Signaturen kunne ikke verifiseres. Meldingen kan være endret underveis eller signert med et annet "
    "sertifikat enn det som er registrert for avsenderen.",
    "S02": "Sertifikatet er ugyldig: utløpt, ikke gyldig ennå, feil bruksområde eller ikke utstedt av en "
    "godkjent utsteder.",
    "S03": "Sertifikatet er trukket tilbake av utstederen. Avsenderen må ta i bruk et nytt virksomhetssertifikat.",
    "S99": "Annen feil med signatur, kryptering eller sertifikat. Se detaljene.",
    "E10": "Meldingsidentifikatoren (MsgId) er ugyldig, for eksempel ikke en UUID, eller brukt før.",
    "E20": "Legen meldingen er adressert til, finnes ikke hos mottakeren.",
    "E21": "Mottakeren finnes ikke: HER-id-en er ukjent i adresseregisteret eller betjenes ikke her. "
    "Kontroller mottakerens HER-id.",
    "E30": "Pasientens fødselsnummer mangler i meldingen.",
    "E31": "Pasientens fødselsnummer eller D-nummer er feil (feil lengde eller feil kontrollsiffer).",
    "E32": "Pasientens navn mangler i meldingen.",
    "E35": "Pasienten finnes ikke i mottakersystemet. Mottakeren må registrere pasienten før meldingen kan tas imot.",
    "E36": "Pasientopplysningene i meldingen er mangelfulle.",
    "E53": "Fødselsnummeret eller D-nummeret finnes ikke i Folkeregisteret.",
    "E54": "Fødselsnummeret er ikke registrert i mottakersystemet.",
    "X99": "Annen feil. Se detaljene fra mottakeren.",
}

STATE_HELP = {
    MessageState.RECEIVED: "stored, not yet checked",
    MessageState.ACCEPTED: "valid and routed",
    MessageState.REJECTED: "refused by this gateway; the sender got an AppRec saying why",
    MessageState.DUPLICATE: "the same sender sent this MsgId before; the original stands",
    DeliveryState.QUEUED: "waiting for a worker",
    DeliveryState.SENDING: "being sent now",
    DeliveryState.RETRY_WAIT: "a transient failure; the next attempt is scheduled",
    DeliveryState.DELIVERED: "the receiving side has it (transport receipt); waiting for its AppRec",
    DeliveryState.APP_OK: "the receiver's system took it in (AppRec OK)",
    DeliveryState.APP_REJECTED: "the receiver's system refused it (AppRec rejected)",
    DeliveryState.APP_PARTIAL: "taken in with errors in a part (AppRec OK with errors)",
    DeliveryState.APPREC_MISSING: "delivered, but no AppRec came in time",
    DeliveryState.EXPIRED: "its time to live ran out before it could be delivered",
    DeliveryState.DEAD: "cannot be delivered: the receiver refused it or it cannot be sent",
    DeliveryState.CANCELLED: "an operator stopped it",
}

ATTENTION = frozenset(str(s) for s in ATTENTION_STATES) | {str(MessageState.REJECTED)}


def error_entry(code: str, detail: str = "", text: str = "") -> dict:
    """One AppRec error for display: the code, the code list's text, our explanation, the detail."""
    code = (code or "").strip()
    return {
        "code": code,
        "text": APPREC_ERRORS.text(code) or text,
        "explanation": EXPLANATIONS.get(code, ""),
        "detail": detail or "",
    }


def type_text(msg_type: str) -> str:
    return MESSAGE_FUNCTION.text(msg_type)


def apprec_status_text(status: str | None) -> str:
    return APPREC_STATUS_LIST.text(str(status)) if status else ""
