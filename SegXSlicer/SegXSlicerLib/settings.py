"""SegX's page of Slicer's Application Settings (*Edit > Application Settings > SegX*):
the server address, the address history, the API token, whether to ask before an image
is sent, and the active learning strategy of *Next sample*.
The keys are the ones the panel reads and writes. Qt; inside Slicer only."""

import uuid

import ctk
import qt

from .jobs import STRATEGY

#: QSettings keys: the last server, the servers used before (";"-separated, newest first,
#: like the MONAI Label plugin's ``MONAILabel/serverUrlHistory``) and the stored answer of
#: the upload consent, written by CTK's message box (:func:`upload_consent_stored`).
SETTINGS_URL = "SegX/serverUrl"
SETTINGS_HISTORY = "SegX/serverUrlHistory"
SETTINGS_CONSENT = "SegX/dontAskBeforeUploading"
SETTINGS_TOKEN = "SegX/apiToken"
SETTINGS_CLIENT_ID = "SegX/clientId"
SETTINGS_STRATEGY = "SegX/activeLearningStrategy"


#: What CTK's ``ctkMessageBox`` writes for "ask again" (``QMessageBox::InvalidRole``).
ASK_AGAIN = -1


def upload_consent_stored() -> bool:
    """Whether the consent dialog will not ask: as CTK reads its key
    (``Libs/Widgets/ctkMessageBox.cpp``, ``readSettings``): any stored value but -1, which
    CTK writes whenever Ok is clicked without ticking "don't show again"."""
    value = qt.QSettings().value(SETTINGS_CONSENT)
    return value is not None and str(value) != "" and int(value) != ASK_AGAIN


def client_id() -> str:
    """This Slicer's id for the server's active learning (made once, kept in the settings),
    so that two annotators are never given the same image at once."""
    settings = qt.QSettings()
    value = str(settings.value(SETTINGS_CLIENT_ID, "") or "")
    if not value:
        value = f"slicer-{uuid.uuid4().hex[:12]}"
        settings.setValue(SETTINGS_CLIENT_ID, value)
    return value


def strategy() -> str:
    """The server strategy *Next sample* asks (the settings' choice, else :data:`jobs.STRATEGY`)."""
    return str(qt.QSettings().value(SETTINGS_STRATEGY, "") or "").strip() or STRATEGY


class SegXSettingsPanel(ctk.ctkSettingsPanel):
    """The settings page, added by the module once Slicer has started (as the MONAI Label
    plugin adds its own)."""

    def __init__(self, *args, **kwargs):
        ctk.ctkSettingsPanel.__init__(self, *args, **kwargs)
        layout = qt.QFormLayout(self)
        server = qt.QLineEdit()
        server.toolTip = "The SegX MONAI Label server the module connects to, e.g. http://127.0.0.1:8000"
        layout.addRow("Server address:", server)
        self.registerProperty(SETTINGS_URL, server, "text", str(qt.SIGNAL("textChanged(QString)")))
        history = qt.QLineEdit()
        history.toolTip = "Servers used before, newest first, separated by ';'"
        layout.addRow("Server address history:", history)
        self.registerProperty(SETTINGS_HISTORY, history, "text", str(qt.SIGNAL("textChanged(QString)")))
        token = qt.QLineEdit()
        token.echoMode = qt.QLineEdit.Password
        token.toolTip = "The API token your server administrator gave you (python monailabel_app/lib/tokens.py), if the server requires one"
        layout.addRow("API token:", token)
        self.registerProperty(SETTINGS_TOKEN, token, "text", str(qt.SIGNAL("textChanged(QString)")))
        chosen = qt.QLineEdit()
        chosen.placeholderText = STRATEGY
        chosen.toolTip = (f"Which unlabeled image Next sample asks the server for: {STRATEGY} (empty: the default), random, first, "
                          "epistemic or segu_lowest_certainty (see the server's /info/ strategies)")  # fmt: skip
        layout.addRow("Active learning strategy:", chosen)
        self.registerProperty(SETTINGS_STRATEGY, chosen, "text", str(qt.SIGNAL("textChanged(QString)")))
        self.askCheckBox = qt.QCheckBox()
        self.askCheckBox.toolTip = "Ask before the module sends an image to a server (patient data leaves this computer)"
        self.askCheckBox.toggled.connect(self.onAskToggled)
        layout.addRow("Ask before sending an image:", self.askCheckBox)
        self.refresh()

    def refresh(self) -> None:
        """Show what the settings hold now (the consent dialog may have changed them since)."""
        self.askCheckBox.blockSignals(True)
        self.askCheckBox.checked = not upload_consent_stored()
        self.askCheckBox.blockSignals(False)

    def showEvent(self, event) -> None:
        self.refresh()

    def onAskToggled(self, ask: bool) -> None:
        """Checked: forget a "don't show again" answer; unchecked: store consent."""
        if ask:
            qt.QSettings().remove(SETTINGS_CONSENT)
        else:
            qt.QSettings().setValue(SETTINGS_CONSENT, int(qt.QMessageBox.Ok))
