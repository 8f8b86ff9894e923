"""Examples that fit the context, and counts of what they teach: every finetune's sequences pass through here.

A sequence is a prompt's tokens, then a response's, then one <|endoftext|> (instruct.collate). The model
reads at most `max_length` of them, and a target is trained when it lies inside that window and, with the
prompt masked, inside the response (or is the closing end-of-text). An example with no trained target left
teaches nothing: it is dropped and counted, and a split left without examples is refused in one line that
says why, before anything is written.

Which end of a too-long sequence is cut (`crop`):
- "right": its end, as the book's collate does (the default): the prompt stays whole, the response is cut;
- "prompt-left": the prompt's start (at least one prompt token stays), so the response and the end of the
  prompt are kept; a response longer than the context is then cut at its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxgpt.errors import UserError

CROPS = ("right", "prompt-left")


def crop(prompt: list[int], response: list[int], max_length: int, how: str) -> list[int]:
    """The prompt to use: whole, or with `how="prompt-left"` its start cut so prompt + response fit."""
    over = len(prompt) + len(response) - max_length
    if how == "prompt-left" and over > 0:
        return prompt[min(over, len(prompt) - 1):]
    return prompt


def trained(prompt_length: int, length: int, max_length: int, mask_prompt: bool) -> int:
    """Targets learned from a sequence of `length` tokens (prompt and response; the target after the last
    is the end-of-text) when the model reads `max_length` of them: from the first response token on when the
    prompt is masked, else all."""
    first = max(prompt_length - 1, 0) if mask_prompt else 0
    return max(0, min(length, max_length) - first)


def fit(prompt: list[int], response: list[int], max_length: int, how: str,
        mask_prompt: bool = True) -> tuple[list[int], int, bool]:
    """(the prompt to use, the targets the example trains, whether any of it is cut)."""
    kept = crop(prompt, response, max_length, how)
    length = len(kept) + len(response)
    return kept, trained(len(kept), length, max_length, mask_prompt), len(kept) < len(prompt) or length > max_length


@dataclass
class Counts:
    """What a split keeps: examples with a trained token, those dropped, those cut, the trained targets."""

    examples: int = 0
    dropped: int = 0
    cropped: int = 0
    trained_tokens: int = 0
    longest_prompt: int = 0  # tokens, over the split's examples (for the refusal's message)
    reasons: dict[str, int] = field(default_factory=dict)  # dropped examples by why

    def keep(self, tokens: int, cut: bool) -> None:
        self.examples += 1
        self.trained_tokens += tokens
        self.cropped += cut

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def record(self) -> dict:
        out = {"examples": self.examples, "dropped": self.dropped, "cropped": self.cropped,
               "trained_tokens": self.trained_tokens}
        return {**out, "dropped_because": dict(self.reasons)} if self.reasons else out


def describe(counts: dict[str, Counts]) -> str:
    """One line for the opening print: examples, trained tokens and what was dropped or cut, per split."""
    parts = []
    for name, c in counts.items():
        extra = "".join(f", {n} {what}" for n, what in ((c.dropped, "dropped"), (c.cropped, "cut")) if n)
        parts.append(f"{name} {c.examples} ({c.trained_tokens:,} trained tokens{extra})")
        for reason, n in c.reasons.items():
            parts[-1] += f" [{n} {reason}]"
    return "; ".join(parts)


def require(counts: dict[str, Counts], max_length: int, unit: str = "examples") -> None:
    """Refuse, in one line, a split that kept no example: training or evaluating on it would learn nothing."""
    for name, c in counts.items():
        if c.examples == 0:
            why = "; ".join(f"{n} {r}" for r, n in c.reasons.items()) or "it had none"
            raise UserError(f"no {unit} of the {name} split keep a trained token within the {max_length}-token "
                            f"context ({why}; the longest prompt has {c.longest_prompt} tokens); raise "
                            "--max-length up to the model's context, shorten the prompts, or pass "
                            "--crop=prompt-left to keep the responses")
