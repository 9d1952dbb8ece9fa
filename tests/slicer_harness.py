"""A stand-in for the 3D Slicer application that the SegXSlicer module runs in.

3D Slicer's GUI cannot be installed here. This harness gives the module's *own* classes
(``SegXSlicer.py`` and ``SegXSlicerLib``, unchanged) what Slicer gives them, built to
behave as Slicer's sources say (tags v5.8.1 and v5.12.3 of Slicer/Slicer):

- **Real MRML**: the scene, nodes, segmentations, colours, volume rendering logic and
  ``slicer.util`` are the ``slicer-core`` wheel's (Slicer's own code). Closing the scene is
  ``scene.Clear(0)``, what *File > Close Scene* calls, with its real Start/EndCloseEvent.
- **Module base classes** (``slicer.ScriptedLoadableModule``): written here after
  ``Base/Python/slicer/ScriptedLoadableModule.py``: every ``__init__`` calls
  ``super().__init__()`` *without arguments* (so a second base class of the module's logic
  gets no arguments, as in Slicer); the widget connects ``cleanup`` to the module
  manager's ``moduleAboutToBeUnloaded(QString)``; ``onReload`` calls the real
  ``slicer.util.reloadScriptedModule``, which re-imports only ``SegXSlicer.py``, calls
  ``cleanup()`` and lets the widget representation build a new widget.
- **Widgets** are built from ``Resources/UI/SegXSlicer.ui`` by a ``QUiLoader`` stand-in:
  each Qt/CTK/MRML class knows its properties (with types) and its signals (with argument
  types); an unknown property, signal or a wrong argument raises. Signals call Python
  slots the way PythonQt does (``src/PythonQtSignalReceiver.cpp``: a function or bound
  method without ``*args`` gets only as many arguments as it declares; more is an error).
  Qt's own side effects are modelled where the module relies on them: setting ``checked``
  emits ``toggled`` and unchecks auto-exclusive sibling radio buttons, adding the first
  combo box item selects it, ``blockSignals`` silences a widget, setting a slider value
  clamps and emits ``valueChanged``.
- **Dialogs**: ``slicer.util.confirmOkCancelDisplay`` / ``errorDisplay`` are Slicer's
  real functions; they build a ``ctkMessageBox`` which is recorded in
  :attr:`FakeApplication.dialogs` and answered from :attr:`FakeApplication.answers`
  (``dontShowAgainSettingsKey`` stored and honoured through ``QSettings`` as
  ``ctkMessageBox`` does).
- **The event loop**: :meth:`FakeApplication.processEvents` fires running ``QTimer`` s, as
  Slicer's Qt loop would; a job's worker thread runs in parallel meanwhile.
- **Loading files**: ``slicer.util.loadVolume`` (real) asks the IO manager, which here
  reads with ITK (SimpleITK) and converts LPS to RAS like
  ``Libs/MRML/Core/vtkMRMLVolumeArchetypeStorageNode.cxx``.
"""

from __future__ import annotations

import ctypes
import importlib
import inspect
import os
import sys
import time
import types
import unittest
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

import slicer

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = REPO / "SegXSlicer"
sys.path.insert(0, str(MODULE_DIR / "Tools"))
from slice_view import new_scene  # noqa: E402  (the scene as Slicer sets it up)

# --- signals ------------------------------------------------------------------------------

#: Python types a signal argument of a Qt type may have.
ARGUMENT_TYPES = {"bool": (bool,), "int": (int,), "double": (int, float), "QString": (str,), "vtkMRMLNode*": (object,), "vtkMRMLScene*": (object,)}


def call_slot(slot, args: tuple):
    """Call ``slot`` as PythonQt does: a Python function or bound method without ``*args``
    gets only as many of the signal's arguments as it declares."""
    function, offset = (slot.__func__, 1) if inspect.ismethod(slot) else (slot, 0)
    if inspect.isfunction(function) and not function.__code__.co_flags & inspect.CO_VARARGS:
        args = args[: function.__code__.co_argcount - offset]
    return slot(*args)


class Signal:
    """A bound Qt signal with a fixed argument signature."""

    def __init__(self, owner, name: str, argument_types: tuple):
        self.owner, self.name, self.argument_types = owner, name, argument_types
        self.slots = []

    def connect(self, slot):
        if not callable(slot):
            raise TypeError(f"{self.name}.connect: {slot!r} is not callable")
        self.slots.append(slot)

    def disconnect(self, slot=None):
        if slot is None:
            self.slots.clear()
        elif slot in self.slots:
            self.slots.remove(slot)
        else:
            raise RuntimeError(f"{self.name}.disconnect: {slot!r} was not connected")

    def emit(self, *args):
        if len(args) != len(self.argument_types):
            raise TypeError(f"{type(self.owner).__name__}.{self.name}{self.argument_types} emitted with {args!r}")
        for value, kind in zip(args, self.argument_types):
            if value is not None and not isinstance(value, ARGUMENT_TYPES[kind]):
                raise TypeError(f"{type(self.owner).__name__}.{self.name}: argument {value!r} is not a {kind}")
        if self.owner._blocked:
            return
        for slot in list(self.slots):
            call_slot(slot, args)


# --- QObject and widgets ---------------------------------------------------------------------


def _merged(cls, attribute: str) -> dict:
    merged = {}
    for klass in reversed(cls.__mro__):
        merged.update(klass.__dict__.get(attribute, {}))
    return merged


class QObject:
    """Properties (``PROPERTIES``: name -> (type, default)) and signals (``SIGNALS``: name
    -> argument types) are declared per class; anything else raises ``AttributeError``."""

    PROPERTIES = {"name": (str, ""), "objectName": (str, "")}
    SIGNALS = {"destroyed": ()}

    def __init__(self, parent=None):
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_signals", {})
        object.__setattr__(self, "_children", [])
        object.__setattr__(self, "_parent", None)
        object.__setattr__(self, "_blocked", False)
        self.setParent(parent)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        signals = _merged(type(self), "SIGNALS")
        if name in signals:
            return self._signals.setdefault(name, Signal(self, name, signals[name]))
        properties = _merged(type(self), "PROPERTIES")
        if name in properties:
            return self._values.get(name, properties[name][1])
        raise AttributeError(f"{type(self).__name__} has no property, signal or method {name!r}")

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        properties = _merged(type(self), "PROPERTIES")
        if name not in properties:
            if type(self).__module__ != __name__:  # a Python subclass (PythonQt gives it a __dict__)
                object.__setattr__(self, name, value)
                return
            raise AttributeError(f"{type(self).__name__} has no property {name!r}")
        kind = properties[name][0]
        if kind is int and isinstance(value, float):  # PythonQt converts a float to an int property
            value = int(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is not object and not isinstance(value, kind):
            raise TypeError(f"{type(self).__name__}.{name} is a {kind.__name__}, not {type(value).__name__} ({value!r})")
        setter = getattr(type(self), f"_set_{name}", None)
        if setter is not None:
            setter(self, value)
        else:
            self._values[name] = value

    def setParent(self, parent):
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        object.__setattr__(self, "_parent", parent)
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self):
        return list(self._children)

    def blockSignals(self, block: bool) -> bool:
        previous = self._blocked
        object.__setattr__(self, "_blocked", bool(block))
        return previous

    def className(self):
        return type(self).__name__

    def connect(self, signature: str, slot):
        """Old-style ``obj.connect("signal(Type)", slot)``."""
        getattr(self, signature.split("(")[0]).connect(slot)

    def disconnect(self, signature: str, slot):
        getattr(self, signature.split("(")[0]).disconnect(slot)

    def deleteLater(self):
        self.setParent(None)


class QWidget(QObject):
    PROPERTIES = {
        "enabled": (bool, True), "visible": (bool, True), "toolTip": (str, ""), "styleSheet": (str, ""),
        "geometry": (object, None), "sizePolicy": (object, None), "windowTitle": (str, ""),
    }  # fmt: skip

    def __init__(self, parent=None):
        super().__init__(parent)
        object.__setattr__(self, "_layout", None)

    def layout(self):
        return self._layout

    def setLayout(self, layout):
        object.__setattr__(self, "_layout", layout)
        layout._owner = self

    def show(self):
        self.visible = True

    def hide(self):
        self.visible = False


class QLayout:
    """A layout: widgets added to it become children of the widget that owns it."""

    def __init__(self, parent=None):
        self._owner, self._items = None, []
        if parent is not None:
            parent.setLayout(self)

    def addWidget(self, widget, *args):
        self._items.append(widget)
        if self._owner is not None:
            widget.setParent(self._owner)

    def addRow(self, *widgets):
        for widget in widgets:
            if isinstance(widget, QObject):
                self.addWidget(widget)

    def addItem(self, item):
        self._items.append(item)

    def count(self):
        return len(self._items)

    def itemAt(self, index):
        return self._items[index] if 0 <= index < len(self._items) else None

    def removeItem(self, item):
        self._items.remove(item)


QVBoxLayout = QHBoxLayout = QFormLayout = QLayout


def SIGNAL(signature: str) -> str:
    """``qt.SIGNAL``: Qt's encoded signal signature."""
    return "2" + signature


class QLabel(QWidget):
    PROPERTIES = {"text": (str, ""), "wordWrap": (bool, False), "textInteractionFlags": (object, None)}


class QAbstractButton(QWidget):
    PROPERTIES = {"text": (str, ""), "checkable": (bool, False), "checked": (bool, False), "autoExclusive": (bool, False)}
    SIGNALS = {"clicked": ("bool",), "toggled": ("bool",), "pressed": (), "released": ()}

    def _set_checked(self, checked: bool):
        if not self.checkable or checked == self.checked:
            return
        self._values["checked"] = checked
        if checked and self.autoExclusive:  # Qt: auto-exclusive buttons of one parent
            for sibling in self._parent.children() if self._parent is not None else []:
                if sibling is not self and isinstance(sibling, type(self)) and sibling.autoExclusive and sibling.checked:
                    sibling._values["checked"] = False
                    sibling.toggled.emit(False)
        self.toggled.emit(checked)

    def click(self):
        """A user's click: a checkable button toggles (a checked radio button stays)."""
        if not self.enabled:
            return
        if self.checkable and not (self.autoExclusive and self.checked):
            self.checked = not self.checked
        self.clicked.emit(self.checked)


class QPushButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.checkable = True


class QRadioButton(QAbstractButton):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.checkable = True
        self.autoExclusive = True


class QComboBox(QWidget):
    PROPERTIES = {"editable": (bool, False), "currentIndex": (int, -1), "currentText": (str, ""), "currentData": (object, None), "count": (int, 0)}
    SIGNALS = {"currentIndexChanged": ("int",), "currentTextChanged": ("QString",), "activated": ("int",), "editTextChanged": ("QString",)}

    def __init__(self, parent=None):
        super().__init__(parent)
        object.__setattr__(self, "_items", [])

    def _set_currentIndex(self, index: int):
        index = index if -1 <= index < len(self._items) else -1
        if index == self._values.get("currentIndex", -1):
            return
        self._values["currentIndex"] = index
        text = self._items[index][0] if index >= 0 else ""
        self._values["currentText"] = text
        self._values["currentData"] = self._items[index][1] if index >= 0 else None
        self.currentIndexChanged.emit(index)
        self.currentTextChanged.emit(text)

    def _set_currentText(self, text: str):
        """Qt's ``setCurrentText``: an editable box shows the text; another selects the item."""
        if self.editable:
            matches = [i for i, (t, _) in enumerate(self._items) if t == text]
            if matches:
                self._set_currentIndex(matches[0])
            if self._values.get("currentText") != text:
                self._values["currentText"] = text
                self.editTextChanged.emit(text)
                self.currentTextChanged.emit(text)
        else:
            matches = [i for i, (t, _) in enumerate(self._items) if t == text]
            if matches:
                self._set_currentIndex(matches[0])

    def _set_currentData(self, value):
        raise AttributeError("QComboBox.currentData is read-only")

    def _set_count(self, value):
        raise AttributeError("QComboBox.count is read-only")

    def addItem(self, text, userData=None):
        if not isinstance(text, str):
            raise TypeError(f"QComboBox.addItem: text must be a str, not {type(text).__name__}")
        self._items.append((text, userData))
        self._values["count"] = len(self._items)
        if self.currentIndex < 0:
            self._set_currentIndex(0)

    def addItems(self, texts):
        for text in texts:
            self.addItem(text)

    def clear(self):
        object.__setattr__(self, "_items", [])
        self._values["count"] = 0
        self._set_currentIndex(-1)
        self._values["currentText"] = ""

    def itemText(self, index):
        return self._items[index][0]

    def itemData(self, index):
        return self._items[index][1]

    def findText(self, text):
        return next((i for i, (t, _) in enumerate(self._items) if t == text), -1)

    def setCurrentIndex(self, index):
        self.currentIndex = index


class QProgressBar(QWidget):
    PROPERTIES = {"value": (int, 0), "minimum": (int, 0), "maximum": (int, 100), "format": (str, "%p%"), "textVisible": (bool, True)}


class QTableWidgetItem:
    def __init__(self, text=""):
        if not isinstance(text, str):
            raise TypeError("QTableWidgetItem needs a str")
        self._text = text

    def text(self):
        return self._text


class QTableWidget(QWidget):
    PROPERTIES = {"editTriggers": (object, None)}

    def __init__(self, parent=None):
        super().__init__(parent)
        object.__setattr__(self, "_cells", {})
        object.__setattr__(self, "_shape", [0, 0])
        object.__setattr__(self, "headers", [])

    def setColumnCount(self, count):
        self._shape[1] = int(count)

    def setRowCount(self, count):
        self._shape[0] = int(count)
        object.__setattr__(self, "_cells", {k: v for k, v in self._cells.items() if k[0] < count})

    def rowCount(self):
        return self._shape[0]

    def columnCount(self):
        return self._shape[1]

    def setHorizontalHeaderLabels(self, labels):
        object.__setattr__(self, "headers", list(labels))

    def setItem(self, row, column, item):
        if not (0 <= row < self._shape[0] and 0 <= column < self._shape[1]):
            raise IndexError(f"QTableWidget.setItem({row}, {column}) outside {self._shape[0]} x {self._shape[1]} (Qt ignores it)")
        if not isinstance(item, QTableWidgetItem):
            raise TypeError("QTableWidget.setItem needs a QTableWidgetItem")
        self._cells[row, column] = item

    def item(self, row, column):
        return self._cells.get((row, column))


class QPlainTextEdit(QWidget):
    PROPERTIES = {"plainText": (str, ""), "readOnly": (bool, False)}
    SIGNALS = {"textChanged": ()}

    def appendPlainText(self, text):
        self._values["plainText"] = (self.plainText + "\n" if self.plainText else "") + str(text)
        self.textChanged.emit()

    def toPlainText(self):
        return self.plainText

    def clear(self):
        self._values["plainText"] = ""


class QLineEdit(QWidget):
    Normal, NoEcho, Password = 0, 1, 2
    PROPERTIES = {"text": (str, ""), "placeholderText": (str, ""), "echoMode": (int, 0)}
    SIGNALS = {"textChanged": ("QString",), "returnPressed": ()}

    def _set_text(self, text: str):
        if text != self._values.get("text", ""):
            self._values["text"] = text
            self.textChanged.emit(text)


class QTimer(QObject):
    """A timer fired by :meth:`FakeApplication.processEvents` while active."""

    PROPERTIES = {"interval": (int, 0), "singleShot": (bool, False), "active": (bool, False)}
    SIGNALS = {"timeout": ()}

    def setInterval(self, milliseconds):
        self.interval = milliseconds

    def start(self, milliseconds=None):
        if milliseconds is not None:
            self.interval = milliseconds
        self._values["active"] = True

    def stop(self):
        self._values["active"] = False

    def isActive(self):
        return self.active


class QSettings:
    """``QSettings()``: one store shared by every instance (the application's settings)."""

    store: dict = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value

    def contains(self, key):
        return key in self.store

    def remove(self, key):
        self.store.pop(key, None)


class QKeySequence:
    def __init__(self, text):
        self.text = text


class QShortcut(QObject):
    SIGNALS = {"activated": ()}

    def __init__(self, key, parent=None):
        """Qt's ``QShortcut(const QKeySequence&, QWidget* parent)``: without a parent widget
        Qt warns and the shortcut never fires (``src/gui/kernel/qshortcut.cpp``): recorded
        in :attr:`QShortcut.unparented`."""
        if not isinstance(key, QKeySequence):
            raise TypeError("QShortcut needs a QKeySequence")
        super().__init__(parent)
        object.__setattr__(self, "key", key)
        if parent is None:
            QShortcut.unparented.append(key.text)


QShortcut.unparented = []


class QMessageBox:
    Ok, Cancel, Yes, No, Retry, Close = 0x400, 0x400000, 0x4000, 0x10000, 0x80000, 0x200000
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4


class QApplication:
    """Static cursor functions used by ``slicer.util`` around dialogs: no override cursor."""

    @staticmethod
    def overrideCursor():
        return None

    @staticmethod
    def restoreOverrideCursor():
        pass


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        return os.path.isfile(self.path)

    def open(self, mode):
        return self.exists()


class QIcon:
    def __init__(self, path=""):
        self.path = path


# --- CTK and MRML widgets ---------------------------------------------------------------


class ctkCollapsibleButton(QAbstractButton):
    PROPERTIES = {"collapsed": (bool, False)}
    SIGNALS = {"contentsCollapsed": ("bool",)}


class ctkSliderWidget(QWidget):
    PROPERTIES = {"value": (float, 0.0), "minimum": (float, 0.0), "maximum": (float, 99.0), "singleStep": (float, 1.0),
                  "pageStep": (float, 10.0), "decimals": (int, 2)}  # fmt: skip
    SIGNALS = {"valueChanged": ("double",)}

    def _set_value(self, value: float):
        value = min(max(value, self.minimum), self.maximum)
        if value != self._values.get("value", 0.0):
            self._values["value"] = value
            self.valueChanged.emit(value)


class ctkMessageBox(QWidget):
    """Answered by the application; ``dontShowAgainSettingsKey`` as in CTK's
    ``Libs/Widgets/ctkMessageBox.cpp`` (``buttonFromSettings``, ``readSettings``,
    ``writeSettings``, ``onFinished``, ``setVisible``): a stored value other than
    ``QMessageBox::InvalidRole`` (-1) ticks "don't show again" and the box clicks that
    button itself (a stored role, e.g. 0 = AcceptRole, clicks the Ok button); after an
    accepting click the key is written: the button if the box was ticked, else -1."""

    PROPERTIES = {"text": (str, ""), "detailedText": (str, ""), "icon": (int, 0), "standardButtons": (int, 0),
                  "dontShowAgainSettingsKey": (str, ""), "dontShowAgainVisible": (bool, False)}  # fmt: skip
    INVALID_ROLE = -1
    ACCEPTING = (0x400, 0x4000)  # Ok, Yes: AcceptRole / YesRole buttons (CTK's default DontShowAgainButtonRoles)

    def exec_(self):
        key = self.dontShowAgainSettingsKey
        stored = int(QSettings().value(key, self.INVALID_ROLE)) if key else self.INVALID_ROLE
        if stored != self.INVALID_ROLE:
            return stored if stored & self.standardButtons else QMessageBox.Ok
        slicer.app.run_nested_event_loop()  # QDialog::exec: a nested loop runs while the reader reads
        button, dont_show_again = slicer.app.answer(self)
        if key and button in self.ACCEPTING:
            QSettings().setValue(key, button if dont_show_again else self.INVALID_ROLE)
        return button


class ctkSettingsPanel(QWidget):
    """A page of the settings dialog; ``registerProperty`` as in CTK's
    ``Libs/Widgets/ctkSettingsPanel.cpp``: a stored value is put into the widget property,
    and every change of it is written back to the settings."""

    def registerProperty(self, key, widget, property_name, signal, label="", options=0, settings=None):
        if not signal.startswith("2"):
            raise TypeError("registerProperty needs the signal as qt.SIGNAL('name(Types)')")
        stored = QSettings().value(key)
        if stored is not None:
            setattr(widget, property_name, stored)
        getattr(widget, signal[1:].split("(")[0]).connect(lambda *args: QSettings().setValue(key, getattr(widget, property_name)))


class qMRMLWidget(QWidget):
    SIGNALS = {"mrmlSceneChanged": ("vtkMRMLScene*",)}

    def setMRMLScene(self, scene):
        object.__setattr__(self, "_scene", scene)
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return getattr(self, "_scene", None)


class qMRMLSortFilterProxyModel(QObject):
    """The combo box's filter (``Libs/MRML/Widgets/qMRMLSortFilterProxyModel.h``)."""

    PROPERTIES = {"hiddenNodeIDs": (list, [])}


class qMRMLNodeComboBox(qMRMLWidget):
    """Lists the scene's nodes of ``nodeTypes`` (and subclasses when ``showChildNodeTypes``),
    except hidden-from-editors nodes and ``hiddenNodeIDs``."""

    PROPERTIES = {"nodeTypes": (list, []), "showChildNodeTypes": (bool, True), "noneEnabled": (bool, False),
                  "addEnabled": (bool, True), "removeEnabled": (bool, True)}  # fmt: skip
    SIGNALS = {"currentNodeChanged": ("vtkMRMLNode*",)}

    def __init__(self, parent=None):
        super().__init__(parent)
        object.__setattr__(self, "_proxy", qMRMLSortFilterProxyModel())
        object.__setattr__(self, "_current", None)

    def sortFilterProxyModel(self):
        return self._proxy

    def nodes(self) -> list:
        """What the drop-down offers."""
        scene = self.mrmlScene()
        if scene is None:
            return []
        offered = []
        for index in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(index)
            kind = any(node.IsA(t) if self.showChildNodeTypes else node.GetClassName() == t for t in self.nodeTypes)
            if kind and not node.GetHideFromEditors() and node.GetID() not in self._proxy.hiddenNodeIDs:
                offered.append(node)
        return offered

    def currentNode(self):
        current = self._current
        return current if current is not None and self.mrmlScene() is not None and self.mrmlScene().IsNodePresent(current) else None

    def setCurrentNode(self, node):
        """As the user picking it: a node the list does not offer is not selected."""
        if node is not None and node not in self.nodes():
            return
        object.__setattr__(self, "_current", node)
        self.currentNodeChanged.emit(node)


class qMRMLSegmentEditorWidget(qMRMLWidget):
    """The Segment Editor's public setters used to embed it (5.8 names)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.updateEffectList()  # the effects registered when the widget is built

    def setMRMLSegmentEditorNode(self, node):
        if node is not None and not node.IsA("vtkMRMLSegmentEditorNode"):
            raise TypeError("setMRMLSegmentEditorNode needs a vtkMRMLSegmentEditorNode")
        object.__setattr__(self, "_editor_node", node)

    def setSegmentationNode(self, node):
        if getattr(self, "_editor_node", None) is None:
            raise RuntimeError("qMRMLSegmentEditorWidget: set the segment editor node first")
        object.__setattr__(self, "_segmentation", node)

    def setSourceVolumeNode(self, node):
        object.__setattr__(self, "_source", node)

    def segmentationNode(self):
        return getattr(self, "_segmentation", None)

    def sourceVolumeNode(self):
        return getattr(self, "_source", None)

    # The effect lifecycle, as ``Modules/Loadables/Segmentations/Widgets/qMRMLSegmentEditorWidget.cxx``
    # behaves: an active effect observes the slice views (Paint keeps painting there) until
    # ``setActiveEffect(None)`` or ``removeViewObservations()``; effects registered after
    # the widget was built appear only after ``updateEffectList()``.
    def setActiveEffectByName(self, name):
        if name and name not in self.effectNames():
            raise ValueError(f"no effect {name!r}")
        object.__setattr__(self, "_active", name or None)
        object.__setattr__(self, "_observing_views", bool(name))

    def setActiveEffect(self, effect):
        self.setActiveEffectByName(effect)

    def activeEffectName(self):
        return getattr(self, "_active", None)

    def observesViews(self):
        return getattr(self, "_observing_views", False)

    def removeViewObservations(self):
        object.__setattr__(self, "_observing_views", False)

    def installKeyboardShortcuts(self):
        object.__setattr__(self, "_shortcuts", True)

    def uninstallKeyboardShortcuts(self):
        object.__setattr__(self, "_shortcuts", False)

    def updateEffectList(self):
        object.__setattr__(self, "_effects", list(SegmentEditorEffectFactory.registered))

    def effectNames(self):
        return list(self._effects)

    def segmentEditorNode(self):
        return getattr(self, "_editor_node", None)


class SegmentEditorEffectFactory(QObject):
    """``slicer.qSlicerSegmentEditorEffectFactory.instance()``: registering an effect (an
    extension's, loaded after the module) emits ``effectRegistered(QString)``."""

    SIGNALS = {"effectRegistered": ("QString",)}
    registered = ["Paint", "Draw", "Erase", "Threshold"]
    _instance = None

    @classmethod
    def instance(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def registerEffect(self, name):
        SegmentEditorEffectFactory.registered = [*SegmentEditorEffectFactory.registered, name]
        self.effectRegistered.emit(name)


WIDGET_CLASSES = {cls.__name__: cls for cls in (QWidget, QLabel, QPushButton, QCheckBox, QRadioButton, QComboBox, QProgressBar, QTableWidget,
                                                QPlainTextEdit, QLineEdit, ctkCollapsibleButton, ctkSliderWidget, qMRMLWidget,
                                                qMRMLNodeComboBox)}  # fmt: skip
LAYOUT_CLASSES = {"QVBoxLayout", "QHBoxLayout", "QFormLayout", "QGridLayout"}


def _property_value(element):
    """The Python value of a ``<property>`` element of a .ui file."""
    child = element[0]
    if child.tag == "bool":
        return child.text == "true"
    if child.tag == "number":
        return int(child.text)
    if child.tag == "double":
        return float(child.text)
    if child.tag == "string":
        return child.text or ""
    if child.tag == "stringlist":
        return [s.text or "" for s in child.findall("string")]
    return object()  # rect, size policy, enum, set: layout only


class QUiLoader:
    """Builds the widget tree of a .ui file with the classes above; unknown classes raise."""

    def load(self, qfile):
        root = ElementTree.parse(qfile.path).getroot()
        top = self._widget(root.find("widget"), None)
        for connection in root.iter("connection"):
            sender = self._find(top, connection.findtext("sender"))
            receiver = self._find(top, connection.findtext("receiver"))
            slot = getattr(receiver, connection.findtext("slot").split("(")[0])
            sender.connect(connection.findtext("signal"), slot)
        return top

    def _find(self, widget, name):
        if widget.name == name:
            return widget
        for child in widget.children():
            found = self._find(child, name) if isinstance(child, QObject) else None
            if found is not None:
                return found
        return None

    def _widget(self, element, parent):
        cls = WIDGET_CLASSES.get(element.get("class"))
        if cls is None:
            raise TypeError(f"the .ui uses {element.get('class')}, which this harness (and the module's tests) do not know")
        widget = cls(parent)
        widget.name = widget.objectName = element.get("name")
        for prop in element.findall("property"):
            value = _property_value(prop)
            if prop.get("name") not in ("geometry", "sizePolicy", "textInteractionFlags", "editTriggers", "orientation", "sizeHint"):
                setattr(widget, prop.get("name"), value)
        layout = element.find("layout")
        if layout is not None:
            widget.setLayout(QLayout())
            self._layout(layout, widget)
        return widget

    def _layout(self, element, owner):
        for item in element.findall("item"):
            for child in item:
                if child.tag == "widget":
                    owner.layout()._items.append(self._widget(child, owner))
                elif child.tag == "layout":
                    self._layout(child, owner)


# --- the application ------------------------------------------------------------------------


class ModuleManager(QObject):
    SIGNALS = {"moduleAboutToBeUnloaded": ("QString",)}


class ApplicationSignals(QObject):
    SIGNALS = {"startupCompleted": ()}


class SettingsDialog:
    """``slicer.app.settingsDialog()``: its pages by name."""

    def __init__(self):
        self.panels = {}

    def addPanel(self, name, panel):
        if not isinstance(panel, ctkSettingsPanel):
            raise TypeError("addPanel needs a ctkSettingsPanel")
        self.panels[name] = panel

    def show_panel(self, name):
        """The reader opens the page: Qt shows the panel widget, which calls its
        ``showEvent`` (a Python override of a PythonQt class is called as in C++)."""
        panel = self.panels[name]
        if hasattr(panel, "showEvent"):
            panel.showEvent(None)
        return panel


class IOManager:
    """``slicer.app.coreIOManager()`` for volumes: read with ITK, LPS -> RAS."""

    @staticmethod
    def _read(file_name, single_file):
        """A DICOM file without ``singleFile`` brings its whole series, sorted along the
        slice normal, as Slicer's archetype reader does (``vtkMRMLVolumeArchetypeStorageNode``
        ``SingleFile`` 0 -> ``vtkITKArchetypeImageSeriesReader``, which groups the folder's
        files by series UID and sorts them by ImagePositionPatient); GDCM's series reader
        does the same here."""
        import SimpleITK as sitk

        if file_name.lower().endswith(".dcm") and not single_file:
            folder = str(Path(file_name).parent)
            reader = sitk.ImageFileReader()
            reader.SetFileName(file_name)
            reader.ReadImageInformation()
            series = sitk.ImageSeriesReader()
            series.SetFileNames(series.GetGDCMSeriesFileNames(folder, reader.GetMetaData("0020|000e").strip()))
            return series.Execute()
        return sitk.ReadImage(file_name)

    def fileType(self, path):
        return "VolumeFile"

    def loadNodes(self, file_type, properties, loaded, messages=None):
        import SimpleITK as sitk

        image = self._read(properties["fileName"], bool(properties.get("singleFile", False)))
        array = sitk.GetArrayFromImage(image)
        vector = image.GetNumberOfComponentsPerPixel() > 1
        if image.GetDimension() == 2:
            array = array[None]
        spacing = list(image.GetSpacing()) + [1.0] * (3 - image.GetDimension())
        direction = np.eye(3)
        direction[: image.GetDimension(), : image.GetDimension()] = np.reshape(image.GetDirection(), (image.GetDimension(),) * 2)
        origin = list(image.GetOrigin()) + [0.0] * (3 - image.GetDimension())
        lps_to_ras = np.diag([-1.0, -1.0, 1.0])
        matrix = np.eye(4)
        matrix[:3, :3] = lps_to_ras @ direction @ np.diag(spacing)
        matrix[:3, 3] = lps_to_ras @ np.asarray(origin)
        node = slicer.util.addVolumeFromArray(array, matrix, properties.get("name", Path(properties["fileName"]).stem),
                                              "vtkMRMLVectorVolumeNode" if vector else None)  # fmt: skip
        loaded.AddItem(node)
        return True


class ScriptedModuleRepresentation(QWidget):
    """``qSlicerScriptedLoadableModuleWidget``: the panel's parent; ``reload`` builds a
    new Python widget from the (re-imported) module file, as Slicer's does."""

    def __init__(self, module_name):
        super().__init__(None)
        self.setLayout(QLayout())
        object.__setattr__(self, "_module_name", module_name)

    def reload(self):
        module = sys.modules[self._module_name]
        widget = getattr(module, f"{self._module_name}Widget")(self)
        widget.setup()
        setattr(slicer.modules, f"{self._module_name}Widget", widget)
        return widget


class FakeApplication:
    """``slicer.app``: settings, dialogs, the module manager, the event loop."""

    applicationName = "Slicer"
    documentationBaseUrl = "https://slicer.readthedocs.io/en/latest/"

    def __init__(self, temporary_path):
        self.temporaryPath = str(temporary_path)
        self.main_window = QWidget()
        self.main_window.objectName = "qSlicerMainWindow"
        self.module_manager = ModuleManager()
        self.signals = ApplicationSignals()
        self.settings_dialog = SettingsDialog()
        self.io_manager = IOManager()
        self.dialogs = []
        self.answers = []

    #: Slicer started with ``--no-main-window`` (its generic ``py_nomainwindow_`` tests):
    #: ``slicer.util.mainWindow()`` then finds no ``qSlicerMainWindow`` and returns None.
    no_main_window = False

    def topLevelWidgets(self):
        return [] if self.no_main_window else [self.main_window]

    def connect(self, signature, slot):
        self.signals.connect(signature, slot)

    def commandOptions(self):
        return types.SimpleNamespace(noMainWindow=self.no_main_window)

    def settingsDialog(self):
        return self.settings_dialog

    def testingEnabled(self):
        return False

    def moduleManager(self):
        return self.module_manager

    def coreIOManager(self):
        return self.io_manager

    def layoutManager(self):
        return None

    def settings(self):
        return QSettings()

    userSettings = settings

    def moduleDocumentationUrl(self, name):
        return self.documentationBaseUrl + name

    def answer(self, box) -> tuple[int, bool]:
        """A shown message box: recorded; answered with the next of :attr:`answers`
        (``(button, dont_show_again)``), ``(Ok, False)`` by default."""
        self.dialogs.append({"text": box.text, "title": box.windowTitle, "details": box.detailedText, "icon": box.icon})
        return self.answers.pop(0) if self.answers else (QMessageBox.Ok, False)

    #: Turns of the nested event loop a shown dialog runs before the reader answers.
    NESTED_TURNS = 3

    def run_nested_event_loop(self):
        """What ``QDialog::exec()`` does while a dialog is open: the event loop keeps
        running inside it, so timers (the module's 20 ms poll) fire meanwhile."""
        for _ in range(self.NESTED_TURNS):
            self.processEvents()

    def processEvents(self):
        """One turn of the event loop: every active timer fires once."""
        for timer in [t for t in _ALL_TIMERS if t.active]:
            timer.timeout.emit()


_ALL_TIMERS: list = []


class _TrackedTimer(QTimer):
    def __init__(self, parent=None):
        super().__init__(parent)
        _ALL_TIMERS.append(self)


# --- slicer.ScriptedLoadableModule, after Base/Python/slicer/ScriptedLoadableModule.py ----------


class ScriptedLoadableModule:
    def __init__(self, parent):
        super().__init__()
        self.parent = parent
        self.moduleName = type(self).__name__
        parent.title, parent.categories, parent.dependencies, parent.contributors = "", [], [], []
        icon = os.path.join(os.path.dirname(parent.path), "Resources", "Icons", self.moduleName + ".png")
        if os.path.isfile(icon):
            parent.icon = QIcon(icon)
        if not hasattr(slicer, "selfTests"):
            slicer.selfTests = {}
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    def runTest(self, msec=100, **kwargs):
        test_case = getattr(importlib.import_module(type(self).__module__), self.moduleName + "Test")()
        test_case.messageDelay = msec
        test_case.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = type(self).__name__[: -len("Widget")] if type(self).__name__.endswith("Widget") else type(self).__name__
        self.developerMode = slicer.util.settingsValue("Developer/DeveloperMode", False, converter=slicer.util.toBool)
        if parent is None:
            self.parent = qMRMLWidget()
            self.parent.setLayout(QLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
        else:
            self.parent = parent
        self.layout = self.parent.layout()
        if parent is None:
            self.setup()
            self.parent.show()
        slicer.app.moduleManager().connect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

    def cleanup(self):
        pass

    def _onModuleAboutToBeUnloaded(self, moduleName):
        if moduleName == self.moduleName:
            self.cleanup()
            slicer.app.moduleManager().disconnect("moduleAboutToBeUnloaded(QString)", self._onModuleAboutToBeUnloaded)

    def setup(self):
        pass  # developer section: developer mode is off

    def onReload(self):
        slicer.util.reloadScriptedModule(self.moduleName)


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = type(self).__name__[: -len("Logic")] if type(self).__name__.endswith("Logic") else type(self).__name__
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is not None:
            if node.GetAttribute("ModuleName") != self.moduleName:
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def createParameterNode(self):
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        slicer.util.delayDisplay(message, msec or requestedDelay or 100)

    def runTest(self):
        pass


# --- installing it ------------------------------------------------------------------------------

#: libc through ``ctypes.PyDLL``: unlike ``CDLL``, its calls keep the GIL.
_LIBC_KEEPING_GIL = ctypes.PyDLL(None)


def idle_holding_gil(seconds: float) -> None:
    """Wait in C without giving the GIL up (``usleep`` called through ``PyDLL``): other
    Python threads of the process stand still meanwhile, as they do while Slicer's main
    thread waits in its Qt event loop; child processes do not."""
    _LIBC_KEEPING_GIL.usleep(int(seconds * 1e6))



class SlicerHarness:
    """Installs the stand-in (``qt``, ``ctk``, ``slicer.app``, ``slicer.mrmlScene``,
    ``slicer.ScriptedLoadableModule`` ...) and loads the SegXSlicer module as Slicer does.
    :meth:`close` restores ``sys.modules`` and ``slicer``."""

    def __init__(self, temporary_path):
        self._saved_modules = {name: sys.modules.get(name) for name in ("qt", "ctk", "slicer.ScriptedLoadableModule", "SegXSlicer")}
        # the library as other tests imported it: loading and reloading the module replaces it
        self._saved_library = {name: module for name, module in sys.modules.items() if name.startswith("SegXSlicerLib")}
        self._saved_slicer = {name: getattr(slicer, name, None) for name in ("app", "mrmlScene", "modules", "qMRMLSegmentEditorWidget", "qSlicerSegmentEditorEffectFactory",
                                                                             "ScriptedLoadableModule", "selfTests")}  # fmt: skip
        self._saved_delay = slicer.util.delayDisplay
        QSettings.store = {}
        QShortcut.unparented = []
        SegmentEditorEffectFactory._instance = None
        SegmentEditorEffectFactory.registered = ["Paint", "Draw", "Erase", "Threshold"]
        _ALL_TIMERS.clear()
        qt = types.ModuleType("qt")
        for name, value in dict(globals()).items():
            if name.startswith("Q") and isinstance(value, type):
                setattr(qt, name, value)
        qt.SIGNAL = SIGNAL
        qt.QTimer = _TrackedTimer
        ctk = types.ModuleType("ctk")
        for cls in (ctkCollapsibleButton, ctkSliderWidget, ctkMessageBox, ctkSettingsPanel):
            setattr(ctk, cls.__name__, cls)
        base = types.ModuleType("slicer.ScriptedLoadableModule")
        for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest):
            setattr(base, cls.__name__, cls)
        sys.modules.update({"qt": qt, "ctk": ctk, "slicer.ScriptedLoadableModule": base})
        self.app = FakeApplication(temporary_path)
        self.scene = new_scene()
        volume_rendering = slicer.vtkSlicerVolumeRenderingLogic()
        volume_rendering.SetMRMLScene(self.scene)
        self.delays = []
        slicer.util.delayDisplay = lambda message, autoCloseMsec=1000, parent=None, **kwargs: self.delays.append(message)
        slicer.app, slicer.mrmlScene, slicer.ScriptedLoadableModule = self.app, self.scene, base
        slicer.qMRMLSegmentEditorWidget = qMRMLSegmentEditorWidget
        slicer.qSlicerSegmentEditorEffectFactory = SegmentEditorEffectFactory
        self.representation = ScriptedModuleRepresentation("SegXSlicer")
        module_info = types.SimpleNamespace(path=str(MODULE_DIR / "SegXSlicer.py"), widgetRepresentation=lambda: self.representation,
                                            logic=lambda: None)  # fmt: skip
        slicer.modules = types.SimpleNamespace(segxslicer=module_info, volumerendering=types.SimpleNamespace(logic=lambda: volume_rendering))
        if str(MODULE_DIR) not in sys.path:
            sys.path.insert(0, str(MODULE_DIR))

    def load_module(self):
        """What Slicer does at start-up and when the user opens the module: import the
        module file, instantiate the module, then its widget, and call ``setup()``."""
        for name in [n for n in sys.modules if n == "SegXSlicer" or n.startswith("SegXSlicerLib")]:
            del sys.modules[name]
        module = importlib.import_module("SegXSlicer")
        self.module = module.SegXSlicer(slicer.modules.segxslicer)
        self.app.signals.startupCompleted.emit()
        return self.representation.reload()

    @property
    def widget(self):
        return slicer.modules.SegXSlicerWidget

    @property
    def ui(self):
        return self.widget.panel.ui

    def enter_module(self):
        """The reader opens the module: Slicer calls the widget's ``enter()``
        (``Base/QTGUI/qSlicerScriptedLoadableModuleWidget.cxx``)."""
        if hasattr(self.widget, "enter"):
            self.widget.enter()

    def exit_module(self):
        """The reader switches to another module: the widget's ``exit()``."""
        if hasattr(self.widget, "exit"):
            self.widget.exit()

    def close_scene(self):
        """*File > Close Scene*."""
        self.scene.Clear(0)

    def unload_module(self):
        """Application exit: the module manager announces the unload."""
        self.app.module_manager.moduleAboutToBeUnloaded.emit("SegXSlicer")

    def process_events_until(self, done, seconds: float = 300.0):
        """Run the event loop until ``done()`` (the module's timer polls meanwhile). Idle
        between turns, the loop *holds the GIL*, as Slicer's main thread does (PythonQt
        keeps it outside Python calls; the Qt event loop waits in C++): :func:`idle_holding_gil`."""
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"not done within {seconds} s; status: {self.ui.statusLabel.text!r}")
            self.app.processEvents()
            idle_holding_gil(0.01)
        self.app.processEvents()

    def wait_for_job(self, seconds: float = 300.0):
        panel = self.widget.panel
        self.process_events_until(lambda: panel.job is None and not panel.runner.running, seconds)

    def close(self):
        """Unload the module (as at application exit), then restore what was replaced."""
        if hasattr(slicer.modules, "SegXSlicerWidget"):
            self.unload_module()
        for name, module in self._saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name in [n for n in sys.modules if n.startswith("SegXSlicerLib")]:
            del sys.modules[name]
        sys.modules.update(self._saved_library)
        for name, value in self._saved_slicer.items():
            if value is None:
                if hasattr(slicer, name):
                    delattr(slicer, name)
            else:
                setattr(slicer, name, value)
        slicer.util.delayDisplay = self._saved_delay
