"""Tab completion from argparse declarations (gdbext.core.completion), without gdb."""
import argparse

import pytest

from gdbext.core import completion as C
from gdbext.core.completion import Native


def make(prog, *arguments):
    p = argparse.ArgumentParser(prog=prog, add_help=False)
    for names, kwargs, completer in arguments:
        action = p.add_argument(*names, **kwargs)
        action.completer = completer
    return p


CACHES = ["kmalloc-64", "kmalloc-128", "dentry"]
TRACK = make("track", (["what"], {"choices": ["all", "cache", "module"]}, None),
             (["name"], {"nargs": "?"},
              lambda done, _partial: {"cache": CACHES, "module": ["hello"]}.get(done[0], [])))
REPORT = make("report", (["--all"], {"action": "store_true"}, None),
              (["--json"], {"action": "store_true"}, None))
STACK = make("stack", (["state"], {}, ("on", "off")))
DUMP = make("dump", (["addr"], {}, Native.EXPRESSION))
LIMIT = make("limit", (["--max"], {}, None), (["what"], {}, ("a", "b")))
VERBS = {"scan": make("scan"), "stack": STACK, "suppress": make("suppress"),
         "suppressions": make("suppressions"), "report": REPORT, "dump": DUMP}


@pytest.mark.parametrize("text, expected", [
    ("", ([], "")), ("tr", ([], "tr")), ("track ", (["track"], "")),
    ("track cache kmal", (["track", "cache"], "kmal")), ("  a  b", (["a"], "b")),
])
def test_split_words_and_the_partial_one(text, expected):
    assert C.split(text) == expected


@pytest.mark.parametrize("done, partial, expected", [
    ([], "", ["all", "cache", "module"]),
    ([], "c", ["cache"]),
    (["cache"], "kmalloc-", ["kmalloc-128", "kmalloc-64"]),
    (["module"], "", ["hello"]),
    (["all"], "", []),
    (["cache", "dentry"], "", []),               # no third argument
])
def test_positionals_complete_from_choices_and_completers(done, partial, expected):
    assert C.arguments(TRACK, done, partial) == expected


def test_options_complete_after_a_dash_and_are_not_offered_twice():
    assert C.arguments(REPORT, [], "--") == ["--all", "--json"]
    assert C.arguments(REPORT, ["--all"], "-") == ["--json"]
    assert C.arguments(REPORT, [], "") == []


def test_an_option_value_is_not_a_positional():
    assert C.arguments(LIMIT, ["--max", "3"], "") == ["a", "b"]
    assert C.arguments(LIMIT, ["--max", "3", "a"], "") == []


@pytest.mark.parametrize("done, partial, expected", [
    ([], "s", ["scan", "stack", "suppress", "suppressions"]),
    ([], "", sorted(VERBS)),
    (["stack"], "", ["off", "on"]),
    (["stack"], "o", ["off", "on"]),
    ([], "stack=o", ["stack=off", "stack=on"]),
    (["stack=on"], "", []),                      # the value was given with `=`
    (["report"], "--j", ["--json"]),
    (["frobnicate"], "", []),
    ([], "frob=", []),
])
def test_verbs_then_their_arguments(done, partial, expected):
    assert C.verbs(VERBS, done, partial) == expected


def test_native_completion_only_for_the_first_argument():
    assert C.verbs(VERBS, ["dump"], "init_t") is Native.EXPRESSION
    assert C.trimmed(Native.EXPRESSION, [], "init_t", "init_t") is Native.EXPRESSION
    # gdb's expression completer would parse the whole text, verb included.
    assert C.trimmed(Native.EXPRESSION, ["dump"], "init_t", "init_t") == []


@pytest.mark.parametrize("candidates, partial, word, expected", [
    (["kmalloc-64", "kmalloc-128"], "kmalloc-", "", ["64", "128"]),      # '-' breaks words
    (["stack=on"], "stack=o", "o", ["on"]),                               # so does '='
    (["scan", "stack"], "s", "s", ["scan", "stack"]),
    (["scan"], "s", None, []),                   # gdb's first pass: word break characters only
])
def test_trimmed_to_the_word_gdb_completes(candidates, partial, word, expected):
    assert C.trimmed(candidates, [], partial, word) == expected


def test_file_names(tmp_path, monkeypatch):
    (tmp_path / "sup.txt").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").write_text("")
    assert C.file_names([], f"{tmp_path}/su") == [f"{tmp_path}/sub/", f"{tmp_path}/sup.txt"]
    assert C.file_names([], f"{tmp_path}/.h") == [f"{tmp_path}/.hidden"]
    assert C.file_names([], f"{tmp_path}/nodir/x") == []
    monkeypatch.chdir(tmp_path)
    assert C.file_names([], "s") == ["sub/", "sup.txt"]


def test_ko_names():
    assert C.ko_names(["a.ko", "b.c", "a.ko", "my-mod.ko", "x.ko.xz"]) == ["a", "my-mod"]
