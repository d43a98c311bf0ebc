"""Hypothesis state machines: each rule of the final replay is a dynamic step.

Hypothesis runs a ``RuleBasedStateMachine`` many times while it generates
and shrinks, then once more (``current_build_context().is_final``) to
replay the shrunk failing program and print it. Only that last run pauses:
its rules (and invariants) run through ``Engine.dynamic_step`` as the steps
of a phase ``program``, named as Hypothesis prints them
(``state = Machine()``, ``state.add(k=3)``), with the machine (``state``,
``self``) and the rule's arguments in the namespace. An edit made there that
lets the final replay pass makes Hypothesis raise ``FlakyFailure`` ("failed
on the first run but now succeeds"): the test is reported *fixed* instead.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from . import runtime

__tracebackhide__ = True
__unittest = True

PHASE = "program"
_WRAPPED = "__stepkernel_rule__"


def prepare(item: Any) -> None:
    """Before a state machine's test runs: wrap its rules and invariants (once per class)."""
    machine = _machine_class(item)
    if machine is None:
        return
    try:
        rules = list(machine.rules()) + list(machine.initialize_rules()) + list(machine.invariants())
    except Exception:  # noqa: BLE001 - a machine Hypothesis itself will reject
        return
    for rule in rules:
        function = getattr(rule, "function", None)
        if function is not None and not hasattr(function, _WRAPPED):
            try:
                rule.function = _wrap(function, rule)
            except Exception:  # noqa: BLE001 - a frozen rule: it runs unstepped
                continue


def _machine_class(item: Any) -> type | None:
    stateful = sys.modules.get("hypothesis.stateful")
    if stateful is None:
        return None
    run = getattr(getattr(item, "cls", None), "runTest", None)
    func = getattr(run, "__func__", run)
    for cell in getattr(func, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if isinstance(value, type) and issubclass(value, stateful.RuleBasedStateMachine):
            return value
    return None


def _is_final() -> bool:
    control = sys.modules.get("hypothesis.control")
    context = getattr(getattr(control, "_current_build_context", None), "value", None)
    return bool(getattr(context, "is_final", False))


def _wrap(function: Any, rule: Any) -> Any:
    @functools.wraps(function)
    def rule_step(machine: Any, **data: Any) -> Any:
        engine = runtime.ENGINE
        if engine is None or engine.current is None or not _is_final():
            return function(machine, **data)
        return _final_step(engine, machine, function, rule, data)

    setattr(rule_step, _WRAPPED, function)
    return rule_step


def _pretty(machine: Any, value: Any) -> str:
    """An argument as Hypothesis prints it (a bundle's value by its name, ``added_0``)."""
    from .function_steps import summary_repr

    try:
        return str(machine._pretty_print(value))
    except Exception:  # noqa: BLE001 - a private helper of Hypothesis that may change
        return summary_repr(value, 60)


def _assignment(machine: Any, rule: Any, result: Any) -> str:
    """``added_0 = `` for a rule with target bundles, the names Hypothesis gives its result next."""
    targets = getattr(rule, "targets", None)
    if not targets or result is None or type(result).__name__ == "MultipleResults":
        return ""
    counters = dict(getattr(machine, "names_counters", {}))
    names = []
    for target in targets:
        names.append(f"{target}_{counters.get(target, 0)}")
        counters[target] = counters.get(target, 0) + 1
    return ", ".join(names) + " = "


def _final_step(engine: Any, machine: Any, function: Any, rule: Any, data: dict) -> Any:
    program = machine.__dict__.setdefault("_stepkernel_program", [f"state = {type(machine).__name__}()"])
    args = ", ".join(f"{k}={_pretty(machine, v)}" for k, v in data.items())
    index = len(program)
    program.append(f"state.{function.__name__}({args})")
    record = engine.current
    if index == 1:
        engine.emit("step_finish", test=record.id, phase=PHASE, index=0, name=program[0], status="passed",
                    duration_s=0.0)
    code = getattr(function, "__code__", None)
    where = (code.co_filename, code.co_firstlineno) if code is not None else None
    module = sys.modules.get(getattr(function, "__module__", "") or "")
    namespace = {"state": machine, "self": machine, **data, "program": program,
                 "bundles": getattr(machine, "bundles", {}),
                 "__stepkernel_edit_hint__": f"{type(machine).__name__}.{function.__name__}"}
    value = engine.dynamic_step(PHASE, index, program, lambda: function(machine, **data), namespace, where=where,
                                module_globals=getattr(module, "__dict__", None))
    program[index] = _assignment(machine, rule, value) + program[index]
    if not engine.step_events:
        engine.emit("step_finish", test=record.id, phase=PHASE, index=index, name=program[index], status="passed",
                    duration_s=None)
    return value


def fixed_by_edit(record: Any, excinfo: Any) -> bool:
    """Whether the test's error is Hypothesis's flaky verdict on a final replay an edit made pass."""
    if record is None or excinfo is None or not record.edited_ran or not record.paused:
        return False
    errors = sys.modules.get("hypothesis.errors")
    flaky = getattr(errors, "Flaky", None)
    return flaky is not None and isinstance(excinfo.value, flaky)
