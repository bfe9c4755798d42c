"""Report building blocks shared by the checkers: data first, rendered to text or JSON after."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Frame:
    """One backtrace frame. SYMBOL is the kernel's `function+off/len`; FILE/LINE may be None."""
    pc: int
    symbol: str | None
    module: str | None
    file: str | None
    line: int | None

    def to_json(self) -> dict:
        return asdict(self)

    def render(self) -> str:
        text = f"[<{self.pc:016x}>] {self.symbol or '?'}"
        if self.module:
            text += f" [{self.module}]"
        if self.file:
            text += f" {self.file}:{self.line}" if self.line else f" {self.file}"
        return text


def render_frames(frames: list[Frame], indent: str = "    ") -> str:
    return "\n".join(indent + f.render() for f in frames)
