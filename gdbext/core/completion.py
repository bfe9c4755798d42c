"""Tab completion from argparse declarations: which words may come next, given those typed.

Pure: the command layer passes its parsers, and the guest's names through completer callables.
A positional argument's candidates are its `completer` attribute (a tuple of words, a Native
completer, or a callable `(positionals typed so far, partial word) -> words`), else its choices.
"""
from __future__ import annotations

import argparse
import enum
import os
from collections.abc import Iterable, Mapping


class Native(enum.Enum):
    """Completions gdb does itself. Its completers complete the whole argument text, so they
    only serve a command's first argument."""
    EXPRESSION = "expression"


Completion = list[str] | Native


def split(text: str) -> tuple[list[str], str]:
    """The words typed before the cursor, and the partial word at it ('' after a space)."""
    words = text.split()
    if not words or text[-1].isspace():
        return words, ""
    return words[:-1], words[-1]


def matching(candidates: Iterable[str], partial: str) -> list[str]:
    return sorted({c for c in candidates if c.startswith(partial)})


def arguments(parser: argparse.ArgumentParser, done: list[str], partial: str) -> Completion:
    """Candidates for PARTIAL after the arguments DONE of PARSER: its options when PARTIAL
    starts with '-', else the words of the positional argument it would be."""
    # argparse keeps its declared arguments only in _actions; there is no public accessor.
    actions = parser._actions
    if partial.startswith("-"):
        return matching((s for a in actions for s in a.option_strings if s not in done), partial)
    valued = {s for a in actions if a.option_strings and a.nargs != 0 for s in a.option_strings}
    positionals: list[str] = []
    skip = False
    for word in done:
        if not skip and not word.startswith("-"):
            positionals.append(word)
        skip = word in valued
    action = _positional(actions, len(positionals))
    if action is None:
        return []
    source = getattr(action, "completer", None) or action.choices or ()
    if isinstance(source, Native):
        return source
    if callable(source):
        source = source(positionals, partial)
    return matching(source, partial)


def _positional(actions, index: int):
    """The positional argument that takes the word after INDEX positional words."""
    for action in (a for a in actions if not a.option_strings):
        if action.nargs in ("*", "+", argparse.REMAINDER):
            return action
        if index == 0:
            return action
        index -= 1
    return None


def verbs(table: Mapping[str, argparse.ArgumentParser], done: list[str],
          partial: str) -> Completion:
    """Candidates for a command whose first word is a verb of TABLE; `VERB=VALUE` (the kernel's
    debugfs form) completes VALUE as the verb's first argument."""
    if done:
        name, _, value = done[0].partition("=")
        rest = ([value] if value else []) + done[1:]
        return arguments(table[name], rest, partial) if name in table else []
    name, eq, value = partial.partition("=")
    if not eq:
        return matching(table, partial)
    if name not in table:
        return []
    values = arguments(table[name], [], value)
    return values if isinstance(values, Native) else [f"{name}={v}" for v in values]


def trimmed(candidates: Completion, done: list[str], partial: str, word: str | None) -> Completion:
    """What gdb wants back: completions of WORD, the end of PARTIAL after gdb's last word-break
    character ('-' and '=' break words, so `kmalloc-` completes as '' + `64`). WORD is None in
    gdb's first pass, which only asks for a Native completer."""
    if isinstance(candidates, Native):
        return [] if done else candidates
    if word is None or not partial.endswith(word):
        return []
    cut = len(partial) - len(word)
    return [c[cut:] for c in candidates]


def file_names(_done: list[str], partial: str) -> list[str]:
    """Paths starting with PARTIAL, directories with a trailing '/' (gdb's filename completer
    would complete the whole argument text, verb included)."""
    head, tail = os.path.split(partial)
    directory = os.path.expanduser(head) or "."
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    hidden_ok = tail.startswith(".")
    names = [e for e in entries if e.startswith(tail) and (hidden_ok or not e.startswith("."))]
    return sorted(os.path.join(head, e) + ("/" if os.path.isdir(os.path.join(directory, e)) else "")
                  for e in names)


def ko_names(files: Iterable[str]) -> list[str]:
    """Module names of the .ko files among FILES."""
    return sorted({f[:-3] for f in files if f.endswith(".ko")})
