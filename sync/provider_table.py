"""The built-in provider table: who runs a mail domain, and how its mailboxes are reached.

Pure data, read by sync.providers (IMAP server settings, trusted hosts) and
migration.detection (domains, MX rules, hints). Change facts here, nowhere else.

Every entry names its source: the provider's own help page and/or Thunderbird's
ISPDB (https://github.com/thunderbird/autoconfig, folder ispdb/), which is what
Thunderbird itself proposes. Ports are 993 with implicit TLS unless said
otherwise; no entry proposes a plain-text login.

    PROVIDERS   Provider(key, label, kind, host, ..., domains, hints, help_url)
                kind "imap": password (or app password) over IMAP;
                kind "microsoft": Microsoft 365 / Outlook.com, reached through Graph;
                kind "google": Gmail / Google Workspace; host is the IMAP server for the
                app-password fallback.
    MX_RULES    MxRule(pattern, provider, host): fnmatch patterns against the domain's MX
                hosts, most specific first. host "" takes the provider's host; "{mx}"
                means the MX host itself serves IMAP (hosters with one server per
                customer, e.g. ALL-INKL's w0….kasserver.com).
    AMBIGUOUS   provider -> candidates the user chooses from (never guessed).

Hints are German msgids (translated in locale/en); help_url is the provider's
page that the hint refers to (app passwords, enabling IMAP).
"""

from dataclasses import dataclass, field

from django.utils.translation import gettext_lazy as _


@dataclass(frozen=True)
class Provider:
    """One mail provider: its key and label, the kind of sign-in (imap, microsoft, google), and for IMAP the
    server (host, port, security) and user-name form, with the hints shown in the login mask."""

    key: str
    label: str
    kind: str = "imap"  # imap | microsoft | google
    host: str = ""
    port: int = 993
    security: str = "ssl"  # ssl (implicit TLS) | starttls
    # "address": log in with the full address; "localpart": with the part before @.
    username_form: str = "address"
    domains: tuple[str, ...] = ()
    hints: tuple = field(default_factory=tuple)
    help_url: str = ""


@dataclass(frozen=True)
class MxRule:
    """A domain whose MX host matches `pattern` is hosted at `provider`; `host`, when set, is the IMAP server
    for such domains (else the provider's own)."""

    pattern: str
    provider: str
    host: str = ""


PROVIDERS: tuple[Provider, ...] = (
    # --- the big international ones ---------------------------------------------------------------------------
    # Google: ISPDB googlemail.com.xml (imap.gmail.com 993 SSL, full address). Google refuses the
    # account password over IMAP; only Sign in with Google (OAuth) or an app password (which needs
    # 2-Step Verification): https://support.google.com/accounts/answer/185833
    Provider(
        "google", "Google Mail (Gmail, Google Workspace)", kind="google", host="imap.gmail.com",
        domains=("gmail.com", "googlemail.com"),
        hints=(_("Google nimmt Ihr normales Passwort für IMAP nicht an. Ohne Google-Anmeldung brauchen Sie ein "
                 "App-Passwort; das gibt es nur mit aktivierter Bestätigung in zwei Schritten."),),
        help_url="https://support.google.com/accounts/answer/185833",
    ),
    # Microsoft: ISPDB hotmail.com.xml and office365.com.xml (outlook.office365.com 993 SSL), Microsoft's
    # "POP, IMAP, and SMTP settings for Outlook.com" (support.microsoft.com). Microsoft 365 and
    # Outlook.com sync through Graph with Microsoft sign-in, so no IMAP server is proposed.
    Provider(
        "microsoft365", "Microsoft 365 / Outlook.com", kind="microsoft",
        domains=("outlook.com", "outlook.de", "hotmail.com", "hotmail.de", "live.com", "live.de", "msn.com"),
    ),
    # iCloud: ISPDB me.com.xml and https://support.apple.com/de-de/102525 (imap.mail.me.com 993 SSL,
    # user name = the part before @). Third-party apps need an app-specific password:
    # https://support.apple.com/de-de/102654
    Provider(
        "icloud", "iCloud Mail", host="imap.mail.me.com", username_form="localpart",
        domains=("icloud.com", "me.com", "mac.com"),
        hints=(_("iCloud Mail verlangt ein app-spezifisches Passwort; Ihr Apple-Account-Passwort wird hier nicht "
                 "angenommen."),
               _("iCloud meldet Sie mit dem Teil vor dem @ an.")),
        help_url="https://support.apple.com/de-de/102654",
    ),
    # Yahoo: ISPDB yahoo.com.xml (imap.mail.yahoo.com 993 SSL, full address). Third-party apps need an
    # app password: https://help.yahoo.com/kb/SLN15241.html
    Provider(
        "yahoo", "Yahoo Mail", host="imap.mail.yahoo.com",
        domains=("yahoo.com", "yahoo.de", "yahoo.at", "yahoo.fr", "yahoo.it", "yahoo.es", "yahoo.co.uk",
                 "ymail.com", "rocketmail.com"),
        hints=(_("Yahoo verlangt ein App-Passwort (Kontosicherheit → App-Passwort generieren); Ihr normales "
                 "Passwort wird hier nicht angenommen."),),
        help_url="https://help.yahoo.com/kb/SLN15241.html",
    ),
    # AOL: ISPDB aol.com.xml (imap.aol.com 993 SSL, full address). App password:
    # https://help.aol.com/articles/Create-and-manage-app-password
    Provider(
        "aol", "AOL Mail", host="imap.aol.com", domains=("aol.com", "aol.de", "aim.com"),
        hints=(_("AOL verlangt ein App-Passwort (Kontosicherheit → App-Passwort generieren); Ihr normales "
                 "Passwort wird hier nicht angenommen."),),
        help_url="https://help.aol.com/articles/Create-and-manage-app-password",
    ),
    # Zoho: ISPDB zoho.com.xml and https://www.zoho.com/mail/help/imap-access.html (imap.zoho.com /
    # imap.zoho.eu for personal accounts, imappro.* for organisations; IMAP must be enabled).
    Provider(
        "zoho", "Zoho Mail", host="imap.zoho.eu", domains=("zoho.eu", "zohomail.eu"),
        hints=(_("IMAP muss in den Zoho-Mail-Einstellungen unter „Mail-Konten“ → „IMAP-Zugriff“ aktiviert sein."),),
        help_url="https://www.zoho.com/mail/help/imap-access.html",
    ),
    # --- German, Austrian and Swiss mail providers -------------------------------------------------------------
    # GMX: ISPDB gmx.net.xml and https://hilfe.gmx.net/pop-imap/imap/imap-serverdaten.html; IMAP is
    # off until enabled: https://hilfe.gmx.net/pop-imap/einschalten.html
    Provider(
        "gmx", "GMX", host="imap.gmx.net",
        domains=("gmx.de", "gmx.net", "gmx.at", "gmx.ch", "gmx.eu", "gmx.org", "gmx.info", "gmx.biz"),
        hints=(_("IMAP muss in den GMX-Einstellungen unter „POP3/IMAP Abruf“ aktiviert sein."),),
        help_url="https://hilfe.gmx.net/pop-imap/einschalten.html",
    ),
    # WEB.DE: https://hilfe.web.de/pop-imap/imap/imap-serverdaten.html (imap.web.de 993 SSL; the
    # WEB.DE user name, i.e. the part before @); enabling: https://hilfe.web.de/pop-imap/einschalten.html
    Provider(
        "webde", "WEB.DE", host="imap.web.de", username_form="localpart", domains=("web.de",),
        hints=(_("IMAP muss in den WEB.DE-Einstellungen unter „POP3/IMAP Abruf“ aktiviert sein."),
               _("WEB.DE meldet Sie mit dem Teil vor dem @ an.")),
        help_url="https://hilfe.web.de/pop-imap/einschalten.html",
    ),
    # T-Online / Telekom (private customers): ISPDB t-online.de.xml (secureimap.t-online.de 993 SSL, full address); mail
    # programs need the separate e-mail password:
    # https://www.telekom.de/hilfe/apps-dienste/e-mail/programme/passwort-verwalten
    Provider(
        "tonline", "T-Online", host="secureimap.t-online.de", domains=("t-online.de", "magenta.de"),
        hints=(_("T-Online braucht das separate E-Mail-Passwort aus dem Kundencenter, nicht das Login-Passwort."),),
        help_url="https://www.telekom.de/hilfe/apps-dienste/e-mail/programme/passwort-verwalten",
    ),
    # IONOS: ISPDB ionos.de (imap.ionos.de 993 SSL, full address; MX kundenserver.de, ionos.de).
    # IONOS also sells Microsoft Exchange mailboxes behind the same MX: see AMBIGUOUS.
    Provider(
        "ionos", "IONOS", host="imap.ionos.de", domains=("ionos.de",),
        hints=(_("Bei IONOS kann das Postfach auch über Microsoft laufen (Microsoft Exchange bei IONOS)."),),
        help_url="https://www.ionos.de/hilfe/index.php?id=2490",
    ),
    # 1&1 (DSL customers' mailboxes): ISPDB 1und1.de.xml (imap.1und1.de 993 SSL, full address; domains
    # online.de, onlinehome.de, ...).
    Provider(
        "1und1", "1&1", host="imap.1und1.de",
        domains=("1und1.de", "online.de", "onlinehome.de", "sofortstart.de", "sofortsurf.de", "go4more.de"),
    ),
    # Strato: ISPDB strato.de.xml (imap.strato.de 993 SSL, full address; MX rzone.de).
    Provider("strato", "Strato", host="imap.strato.de", domains=("strato.de",),
             help_url="https://www.strato.de/faq/mail/externes-e-mail-programm-mit-strato-e-mail-adresse-nutzen/"),
    # freenet: ISPDB freenet.de.xml, https://kundenservice.freenet.de/faq/e-mail-client-mail/
    # einstellungen-serverdaten-fuer-alle-e-mail-programme/ (mx.freenet.de 993 SSL, full address);
    # client access is off until enabled (…/pop3-imap-und-smtp-aktivieren/).
    Provider(
        "freenet", "freenet", host="mx.freenet.de", domains=("freenet.de",),
        hints=(_("IMAP muss in den freenet-Einstellungen unter „POP3/IMAP/SMTP“ aktiviert sein."),),
        help_url="https://kundenservice.freenet.de/faq/e-mail-client-mail/pop3-imap-und-smtp-aktivieren/",
    ),
    # Posteo: ISPDB posteo.de.xml and https://posteo.de/hilfe/wie-richte-ich-posteo-in-einem-mailprogramm-ein-
    # pop3-imap-und-smtp (server posteo.de 993 SSL, full address).
    Provider(
        "posteo", "Posteo", host="posteo.de",
        domains=("posteo.de", "posteo.net", "posteo.at", "posteo.ch", "posteo.eu", "posteo.org", "posteo.com"),
    ),
    # mailbox.org: ISPDB mailbox.org.xml, https://kb.mailbox.org/de/privat/e-mail/e-mail-konfiguration/
    # (imap.mailbox.org 993 SSL, full address); with 2FA an application password.
    Provider(
        "mailboxorg", "mailbox.org", host="imap.mailbox.org", domains=("mailbox.org",),
        help_url="https://kb.mailbox.org/de/privat/sicherheit-und-privatsphaere/"
                 "applikationspasswoerter-fuer-externe-programme/",
    ),
    # mail.de: mail.de's help pages for e-mail programs, https://mail.de/hilfe (imap.mail.de 993 SSL,
    # full address).
    Provider("mailde", "mail.de", host="imap.mail.de", domains=("mail.de",)),
    # Telekom business (Homepage Center: mailboxes on the customer's own domain): Telekom's help
    # https://homepagecenter.telekom.de/hilfe/e-mail-benutzer/… says mail programs log in with the
    # mailbox's separate E-Mail-Passwort, and lists the servers on
    # https://homepagecenter.telekom.de/hilfe/uebersicht-der-server. Neither the IMAP host nor the MX
    # names could be confirmed from a source here, so no host and no MX rule are guessed: the
    # entry is offered in the picker with the page that names the server.
    Provider(
        "telekom_business", "Telekom Homepage Center (Geschäftskunden)", host="",
        hints=(_("Den IMAP-Server Ihres Postfachs nennt das Homepage Center der Telekom unter „Übersicht der "
                 "Server“."),
               _("Die Telekom verlangt für E-Mail-Programme das separate E-Mail-Passwort des Postfachs.")),
        help_url="https://homepagecenter.telekom.de/hilfe/uebersicht-der-server",
    ),
    # --- hosters: customers' own domains, found by MX ------------------------------------------------------------
    # Hetzner: ISPDB hetzner.de.xml (mail.your-server.de 993 SSL, full address; MX your-server.de).
    Provider("hetzner", "Hetzner", host="mail.your-server.de"),
    # ALL-INKL: ALL-INKL's instructions for mail programs (https://all-inkl.com/wichtig/anleitungen/,
    # section E-Mail): the customer's own server w0….kasserver.com (shown in the KAS) receives mail
    # (MX) and serves IMAP (993 SSL); older mailboxes log in with the mailbox name m0….
    Provider(
        "allinkl", "ALL-INKL", host="",
        hints=(_("Den IMAP-Server (w0….kasserver.com) zeigt Ihnen das KAS von ALL-INKL."),
               _("Scheitert die Anmeldung mit der Adresse, verwenden Sie den Postfach-Namen (m0…) aus dem KAS.")),
    ),
    # domainFACTORY: ISPDB df.eu (sslin.df.eu 993 SSL, full address; MX ispgateway.de).
    Provider("domainfactory", "domainFACTORY", host="sslin.df.eu"),
    # Host Europe: Host Europe's FAQ on setting up mail programs (https://www.hosteurope.de/faq/, section
    # E-Mail): imap.hosteurope.de 993 SSL, the full address (older WebHosting mailboxes log in with
    # their mailbox name from the KIS); customers' domains receive through mx0/mx1.hosteurope.de.
    Provider(
        "hosteurope", "Host Europe", host="imap.hosteurope.de", domains=("hosteurope.de",),
        hints=(_("Scheitert die Anmeldung mit der Adresse, verwenden Sie den Postfach-Namen aus dem KIS von Host "
                 "Europe."),),
    ),
    # Mittwald: Mittwald's mail documentation (https://developer.mittwald.de/docs/v2/platform/mail/ and
    # mittwald.de/faq): mail programs use mail.agenturserver.de, IMAP 993 SSL/TLS, the full address;
    # mailboxes of the older customer centre log in with their mailbox name (p…p…). Mittwald's mail
    # hosts (MX, mailout0N) all sit under agenturserver.de.
    Provider(
        "mittwald", "Mittwald", host="mail.agenturserver.de",
        hints=(_("Scheitert die Anmeldung mit der Adresse, verwenden Sie den Postfach-Namen (p…) aus dem "
                 "Kundencenter von Mittwald."),),
    ),
    # united-domains: https://www.united-domains.de/help/faq-article/was-ist-der-unterschied-zwischen-pop3-und-imap/
    # (imaps.udag.de 993 SSL/TLS or 143 STARTTLS).
    Provider("udag", "united-domains", host="imaps.udag.de"),
)

MX_RULES: tuple[MxRule, ...] = (
    # Microsoft 365 (https://learn.microsoft.com/microsoft-365/enterprise/external-domain-name-system-records):
    # <tenant>.mail.protection.outlook.com; with inbound DNSSEC <tenant>.<id>.mx.microsoft.
    # Outlook.com consumer domains use *.olc.protection.outlook.com.
    MxRule("*.mail.protection.outlook.com", "microsoft365"),
    MxRule("*.olc.protection.outlook.com", "microsoft365"),
    MxRule("*.mx.microsoft", "microsoft365"),
    # Google Workspace (https://support.google.com/a/answer/174125): smtp.google.com, or the older
    # set aspmx.l.google.com, alt1-4.aspmx.l.google.com, aspmx2-5.googlemail.com.
    MxRule("smtp.google.com", "google"),
    MxRule("aspmx.l.google.com", "google"),
    MxRule("*.aspmx.l.google.com", "google"),
    MxRule("aspmx*.googlemail.com", "google"),
    # Apple iCloud+ custom domains: Apple's setup asks for MX mx01.mail.icloud.com and mx02.mail.icloud.com.
    MxRule("mx*.mail.icloud.com", "icloud"),
    # AOL before Yahoo: both run on yahoodns.net (ISPDB aol.com.xml: mail.gm0.yahoodns.net).
    MxRule("*.mail.gm0.yahoodns.net", "aol"),
    MxRule("*.yahoodns.net", "yahoo"),
    # Zoho custom domains (organisation accounts use imappro.*): mx.zoho.eu / mx.zoho.com and mx2, mx3.
    MxRule("mx*.zoho.eu", "zoho", host="imappro.zoho.eu"),
    MxRule("mx*.zoho.com", "zoho", host="imappro.zoho.com"),
    # GMX/WEB.DE business (a company's own domain with GMX or WEB.DE mailboxes): the IMAP servers are
    # ISPDB gmx.net.xml / web.de.xml; 1&1 Mail & Media's inbound for customer domains is
    # mx00/mx01.emig.gmx.net (as seen in such domains' DNS; no provider page for it was at hand).
    # GMX logs in with the full address; WEB.DE with the WEB.DE user name (ISPDB web.de.xml).
    MxRule("mx*.emig.gmx.net", "gmx"),
    MxRule("mx*.gmx.net", "gmx"),
    MxRule("mx-ha*.web.de", "webde"),
    MxRule("mx*.t-online.de", "tonline"),
    MxRule("smtpin.rzone.de", "strato"),
    MxRule("mx*.ionos.de", "ionos"), MxRule("mx*.ionos.com", "ionos"), MxRule("mx*.kundenserver.de", "ionos"),
    MxRule("mxext*.mailbox.org", "mailboxorg"),
    MxRule("*.your-server.de", "hetzner"),
    MxRule("*.kasserver.com", "allinkl", host="{mx}"),
    MxRule("*.ispgateway.de", "domainfactory"),
    MxRule("*.udag.de", "udag"),
    MxRule("mx*.hosteurope.de", "hosteurope"),
    MxRule("*.agenturserver.de", "mittwald"),
)

# Hosters whose MX cannot tell an IMAP mailbox from a Microsoft one: the user chooses.
AMBIGUOUS: dict[str, list[str]] = {"ionos": ["ionos", "microsoft365"]}

APP_PASSWORD_HINT = _("Ist die Zwei-Faktor-Anmeldung aktiv, verwenden Sie ein App-Passwort.")
