"""A small desktop app (Tkinter) that migrates its offline data in the background at start.

At start it calls ``auto_migrate(...)``, which returns at once; the window shows a status
line and a progress bar while the migration runs in its thread, and asks, item by item,
which version to keep when an item changed both here and in the cloud. Closing the
window stops the migration at a safe point; the next start resumes it. Started with no
user (``--user ""``), the app works anonymously and offers "Register": registering
starts the migration at once (the ``UserRegistered`` path).

    python examples/startup_hook.py --store PATH [--headless] [--answer local|server]

Server, user and token default to ``MIGRATION_SERVER``, ``MIGRATION_USER`` and
``MIGRATION_TOKEN``.

Headless mode (``--headless``) runs the same app, the same callbacks, the same event
loop pumping the same queue, with a text screen in place of the Tk widgets: everything
the window would show is printed as a line (``status: ...``, ``progress: ...``,
``ask: ...``), and dialogs are answered with ``--answer``. The tests drive it that way
(no display needed); ``--echo`` prints the same lines from the real Tk window, for a
test run under a virtual display.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import queue
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sdk import (
    AutoMigration,
    AutoState,
    AutoStatus,
    Conflict,
    ConflictPolicy,
    MigrationOptions,
    MigrationResult,
    Progress,
    ProgressPhase,
    auto_migrate,
)

POLL_MS = 50  # how often the GUI thread drains the migration's callbacks
ENDED = (
    AutoState.DONE,
    AutoState.SYNCED,
    AutoState.NOTHING_TO_MIGRATE,
    AutoState.FAILED,
    AutoState.STOPPED,
)


class Screen(Protocol):
    """What the app needs from a toolkit; a Tk window and a text screen provide it."""

    def show_status(self, text: str) -> None: ...
    def show_progress(self, fraction: float, text: str) -> None: ...
    def ask(self, conflict: Conflict, answer: Callable[[str], None]) -> None: ...
    def offer_register(self, register: Callable[[], None]) -> None: ...
    def after(self, ms: int, callback: Callable[[], None]) -> None: ...
    def run(self, on_close: Callable[[], None]) -> None: ...
    def close(self) -> None: ...


class Transcript:
    """The lines headless mode prints, one per thing the window shows."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._percent = -1

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def progress(self, fraction: float, text: str) -> None:
        percent = int(fraction * 100)
        if percent != self._percent:  # the bar only redraws when it moves
            self._percent = percent
            self.line(f"progress: {percent}% {text}")


def side(item: Any) -> str:
    if item["deleted"]:
        return "deleted"
    return json.dumps(item["data"], sort_keys=True)


class MigrationApp:
    """The app's own code around the SDK: the same with Tk or headless."""

    def __init__(self, screen: Screen, args: argparse.Namespace) -> None:
        self.screen = screen
        self.args = args
        self.ui_calls: queue.Queue[Callable[[], None]] = queue.Queue()
        self.questions: list[Conflict] = []
        self.migration: AutoMigration | None = None
        self.closing = False
        self.fraction = 0.0

    def start(self) -> None:
        args = self.args
        self.migration = auto_migrate(
            server=args.server,
            user_id=args.user or None,  # nobody signed in: the data waits
            token=args.token,
            store_path=args.store,
            options=MigrationOptions(
                batch_size=args.batch_size,
                max_in_flight=1,
                conflicts=ConflictPolicy(default="manual"),  # the user decides each one
            ),
            dispatch=self.ui_calls.put,  # every callback below runs on the GUI thread
            on_progress=self.on_progress,
            on_state=self.on_state,
            on_conflicts=self.on_conflicts,
            on_done=self.on_done,
        )
        self.screen.after(POLL_MS, self.pump)

    def pump(self) -> None:
        """Run what the migration thread handed over, on this (the GUI) thread."""
        while not self.closing:
            try:
                call = self.ui_calls.get_nowait()
            except queue.Empty:
                break
            call()
        if not self.closing:
            self.screen.after(POLL_MS, self.pump)

    def on_progress(self, progress: Progress) -> None:
        uploading = progress.phase is ProgressPhase.UPLOADING
        # One bar over every phase: ``overall`` never goes back, ``fraction`` restarts per phase.
        self.fraction = progress.overall
        self.screen.show_progress(
            self.fraction, f"{progress.phase.value} {progress.items_done}/{progress.items_total}"
        )
        close_at = self.args.close_at
        if close_at is not None and uploading and progress.fraction >= close_at:
            self.quit()  # as if the user closed the window mid-upload

    def on_state(self, status: AutoStatus) -> None:
        self.screen.show_status(status.message)  # a sentence for the user; .detail is for logs
        if status.state is AutoState.ANONYMOUS and self.args.register_as:
            self.screen.offer_register(self.register)
        if self.args.quit_when_settled and status.state in ENDED:
            self.screen.after(0, self.quit)

    def on_conflicts(self, conflicts: list[Conflict]) -> None:
        self.questions = list(conflicts)
        self.ask_next()

    def ask_next(self) -> None:
        if not self.questions or self.closing:
            return
        conflict = self.questions.pop(0)

        def answer(choice: str) -> None:
            assert self.migration is not None
            self.migration.resolve(conflict.conflict_id, choice)  # journaled at once
            self.ask_next()

        self.screen.ask(conflict, answer)

    def on_done(self, result: MigrationResult) -> None:
        self.screen.show_status(f"Your {result.item_count} items are safe in the cloud")

    def register(self) -> None:
        """The sign-up form succeeded: migrate this user's local data right away."""
        assert self.migration is not None
        self.screen.show_status(f"registered as {self.args.register_as}")
        self.migration.user_registered(self.args.register_as, self.args.token)

    def quit(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.migration is not None:
            stopped = self.migration.stop(timeout=5)  # a safe point; resumes next start
            self.pump_once()
            self.screen.show_status(f"closed ({self.migration.state.value}, stopped: {stopped})")
        self.screen.close()

    def pump_once(self) -> None:
        while not self.ui_calls.empty():
            self.ui_calls.get_nowait()()


class TextScreen:
    """Headless mode: a tiny event loop, and the window's content as lines of text."""

    def __init__(self, answer: str, transcript: Transcript) -> None:
        self.answer = answer
        self.transcript = transcript
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self.order = itertools.count()
        self.closed = False

    def show_status(self, text: str) -> None:
        self.transcript.line(f"status: {text}")

    def show_progress(self, fraction: float, text: str) -> None:
        self.transcript.progress(fraction, text)

    def ask(self, conflict: Conflict, answer: Callable[[str], None]) -> None:
        self.transcript.line(
            f"ask: {conflict.collection}/{conflict.key}: this device {side(conflict.local)}"
            f" | the cloud {side(conflict.server)}"
        )
        self.transcript.line(f"answer: {self.answer}")
        self.after(0, lambda: answer(self.answer))

    def offer_register(self, register: Callable[[], None]) -> None:
        self.transcript.line("offer: register")
        self.after(0, register)  # the user fills in the form at once

    def after(self, ms: int, callback: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + ms / 1000, next(self.order), callback))

    def run(self, on_close: Callable[[], None]) -> None:
        while not self.closed and self.timers:
            due, _, callback = self.timers[0]
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # idle until the next timer, as a GUI loop does
                continue
            heapq.heappop(self.timers)
            callback()

    def close(self) -> None:
        self.closed = True
        self.transcript.line("closed")


class TkScreen:
    """The real window: a status line, a progress bar, a button, and conflict dialogs."""

    def __init__(self, answer: str | None, transcript: Transcript) -> None:
        import tkinter as tk
        from tkinter import ttk

        self.tk, self.answer, self.transcript = tk, answer, transcript
        self.root = tk.Tk()
        self.root.title("FlashCards")
        self.root.geometry("480x150")
        self.status = tk.StringVar(value="Starting...")
        self.detail = tk.StringVar()
        tk.Label(self.root, textvariable=self.status, wraplength=460).pack(padx=10, pady=8)
        self.bar = ttk.Progressbar(self.root, maximum=100, length=440)
        self.bar.pack(padx=10)
        tk.Label(self.root, textvariable=self.detail).pack()
        self.buttons = tk.Frame(self.root)
        self.buttons.pack(pady=6)
        self.quit_button = tk.Button(self.buttons, text="Quit")
        self.quit_button.pack(side="right")

    def show_status(self, text: str) -> None:
        self.status.set(text)
        self.transcript.line(f"status: {text}")

    def show_progress(self, fraction: float, text: str) -> None:
        self.bar["value"] = fraction * 100
        self.detail.set(text)
        self.transcript.progress(fraction, text)

    def ask(self, conflict: Conflict, answer: Callable[[str], None]) -> None:
        tk = self.tk
        dialog = tk.Toplevel(self.root)
        dialog.title("Which version do you want to keep?")
        dialog.transient(self.root)
        text = (
            f"{conflict.collection} / {conflict.key} changed on this device and in the cloud."
            f"\n\nThis device: {side(conflict.local)}\nThe cloud: {side(conflict.server)}"
        )
        tk.Label(dialog, text=text, justify="left", wraplength=420).pack(padx=12, pady=10)
        self.transcript.line(
            f"ask: {conflict.collection}/{conflict.key}: this device {side(conflict.local)}"
            f" | the cloud {side(conflict.server)}"
        )

        def choose(choice: str) -> None:
            self.transcript.line(f"answer: {choice}")
            dialog.destroy()
            answer(choice)

        buttons = {}
        for choice, label in (("local", "Keep this device's"), ("server", "Keep the cloud's")):
            buttons[choice] = tk.Button(dialog, text=label, command=lambda c=choice: choose(c))
            buttons[choice].pack(side="left", padx=12, pady=8)
        if self.answer is not None:  # unattended: click the button, as a user would
            dialog.after(200, buttons[self.answer].invoke)

    def offer_register(self, register: Callable[[], None]) -> None:
        button = self.tk.Button(self.buttons, text="Register", command=register)
        button.pack(side="left")
        self.transcript.line("offer: register")
        if self.answer is not None:
            self.root.after(200, button.invoke)

    def after(self, ms: int, callback: Callable[[], None]) -> None:
        self.root.after(ms, callback)

    def run(self, on_close: Callable[[], None]) -> None:
        self.quit_button["command"] = on_close
        self.root.protocol("WM_DELETE_WINDOW", on_close)
        self.root.mainloop()

    def close(self) -> None:
        self.transcript.line("closed")
        self.root.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("MIGRATION_SERVER"))
    parser.add_argument("--user", default=os.environ.get("MIGRATION_USER"))
    parser.add_argument("--token", default=os.environ.get("MIGRATION_TOKEN"))
    parser.add_argument("--store", type=Path, required=True, help="the app's local store")
    parser.add_argument("--headless", action="store_true", help="text screen, no display")
    parser.add_argument("--echo", action="store_true", help="Tk mode: print what it shows")
    parser.add_argument("--answer", choices=("local", "server"), help="answer every dialog")
    parser.add_argument("--register-as", default=None, help="the id the user registers with")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--close-at", type=float, help="close the window at this upload share")
    parser.add_argument(
        "--quit-when-settled", action="store_true", help="close once there is nothing to do"
    )
    args = parser.parse_args(argv)
    given = {"MIGRATION_SERVER": args.server, "MIGRATION_TOKEN": args.token}
    if missing := [name for name, value in given.items() if not value]:
        # MIGRATION_USER may be empty: nobody signed in yet, the app offers "Register".
        sys.exit(
            f"startup_hook.py needs MIGRATION_SERVER and MIGRATION_TOKEN (or --server and "
            f"--token), and MIGRATION_USER unless the user registers in the app (missing: "
            f'{", ".join(missing)}); see the README\'s "Try it in one terminal"'
        )

    transcript = Transcript(enabled=args.headless or args.echo)
    screen: Screen
    if args.headless:
        screen = TextScreen(args.answer or "server", transcript)
    else:
        screen = TkScreen(args.answer, transcript)
    app = MigrationApp(screen, args)
    app.start()
    screen.run(on_close=app.quit)
    assert app.migration is not None
    state = app.migration.state
    return 0 if state in (AutoState.DONE, AutoState.SYNCED, AutoState.NOTHING_TO_MIGRATE) else 3


if __name__ == "__main__":
    sys.exit(main())
