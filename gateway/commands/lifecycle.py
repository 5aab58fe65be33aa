"""`komut lifecycle`: the message lifecycle table as text or as the Mermaid diagram in the docs."""

from __future__ import annotations

from gateway import lifecycle


def register(subparsers) -> None:
    p = subparsers.add_parser("lifecycle", help="print the message lifecycle (states and transitions)")
    p.add_argument(
        "--markdown", action="store_true", help="the docs page docs/lifecycle.md, generated from the table"
    )
    p.set_defaults(func=cmd_lifecycle)


def markdown() -> str:
    rows = "\n".join(
        f"| {t.source or '(new)'} | {t.target} | {t.trigger} | {t.actor} |"
        for t in lifecycle.DELIVERY_TRANSITIONS
    )
    message_rows = "\n".join(
        f"| {t.source or '(new)'} | {t.target} | {t.trigger} | {t.actor} |"
        for t in lifecycle.MESSAGE_TRANSITIONS
    )
    final = ", ".join(sorted(lifecycle.FINAL_DELIVERY_STATES))
    attention = ", ".join(sorted(lifecycle.ATTENTION_STATES))
    return f"""# Message lifecycle

Generated from `gateway/lifecycle.py` by `komut lifecycle --markdown`; a test keeps this page equal
to the table, so the code, this page and the UI cannot disagree.

A message has a state of its own (was it taken in?) and each receiver has a delivery state
(where is it now?). Final delivery states: {final}; `delivered` is final for an AppRec, which
expects no AppRec back. States an operator should look at: {attention}.

```mermaid
{lifecycle.mermaid()}
```

## Message transitions

| from | to | trigger | actor |
|---|---|---|---|
{message_rows}

## Delivery transitions

| from | to | trigger | actor |
|---|---|---|---|
{rows}
"""


def cmd_lifecycle(args) -> int:
    if args.markdown:
        print(markdown(), end="")
    else:
        for t in lifecycle.DELIVERY_TRANSITIONS:
            print(f"{t.source or '(new)':>15} -> {t.target:<15} {t.trigger} ({t.actor})")
    return 0
