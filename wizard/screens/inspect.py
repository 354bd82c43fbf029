"""Step 3 — Inspect: model skeleton without weights; projector tree; last-layer picker."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Input, Label, SelectionList, Static, Tree

from ..services.answers import group_size_from_text
from ..services.errors import WizardError
from ..widgets.marks import TickList
from .base import StepScreen

WHY = ("Why the pick matters: rotation methods (QuaRot) rotate the language model's residual stream, "
       "so every layer that writes into it — the token embedding and the projector's last layer(s), "
       "whose outputs are the image tokens — must be rotated too, weight and bias.")


class InspectScreen(StepScreen):
    TITLE_TEXT = "Inspect"
    FOCUS = "#group-size"

    def action_primary(self) -> None:
        self.start_inspect()

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="row"):
            yield Label("Group size ")
            yield Input(id="group-size", classes="narrow", type="integer")
            yield Button("Inspect", id="inspect", variant="primary")
        yield Static("", id="status")
        yield Static("", id="summary")
        yield Label("Projector (class, shape, bias, parameters):")
        yield Tree("projector", id="projector")
        yield Label("Projector last layer(s) — the layers whose output enters the language model:")
        yield TickList(id="picks")
        yield Static(WHY, id="why")
        yield Static("", id="flags")
        yield Label("Linear layers to quantize:")
        yield DataTable(id="quant-layers", zebra_stripes=True)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#group-size", Input).value = str(self.answers.generate.group_size or "")
        table = self.query_one("#quant-layers", DataTable)
        table.add_columns("layer", "in", "out", "group size divides")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "inspect":
            self.start_inspect()

    def on_enter(self) -> None:
        # inspecting reads no weights and takes a second: do it on entering the step
        src = self.answers.source
        if getattr(self, "report", None) is None and src.weights_dir and Path(src.weights_dir).exists():
            self.start_inspect()

    def start_inspect(self) -> None:
        from .. import steps

        src = self.answers.source
        if not src.weights_dir or not Path(src.weights_dir).exists():
            self.set_status("No weights to inspect — clone them in the Source step.", error=True)
            return
        try:
            self.answers.generate.group_size = group_size_from_text(self.query_one("#group-size", Input).value)
        except WizardError as e:
            self.set_status(str(e), error=True)
            return
        session = self.session
        self.start_step("inspect", lambda r: steps.inspect(session, r), "#inspect", "inspecting (no weights are read)…")

    def step_done(self, name: str, rep) -> str:
        return self.show_report(rep)

    def show_report(self, rep) -> str:
        ins = self.answers.inspect
        self.report = rep
        d = rep.to_dict()
        self.query_one("#summary", Static).update(
            f"[b]{rep.architecture}[/b] ({rep.model_kind})\n"
            f"language model: {rep.language_model_path} — {rep.num_blocks} blocks, hidden size {rep.hidden_size}\n"
            f"vision tower: {rep.vision_tower_path}\nprojector: {rep.projector_path} "
            f"(injection points found by {escape(rep.proposal_source)})")
        tree = self.query_one("#projector", Tree)
        tree.clear()
        tree.root.set_label(f"{rep.projector_path}: {(d['projector_tree'] or {}).get('class', '')}")
        _fill(tree.root, (d["projector_tree"] or {}).get("children"))
        tree.root.expand_all()
        picks = self.query_one("#picks", SelectionList)
        picks.clear_options()
        for c in d["candidates"]:
            name, shape = c["name"], c.get("shape") or ""
            role = rep.injection_roles.get(name)
            picks.add_option((f"{name}  {c.get('class', '')} {shape}" + (f"  — {role}" if role else ""), name,
                              name in ins.projector_last_layers))
        flags = "\n".join(f"⚠ {f}" for f in rep.flags)
        self.query_one("#flags", Static).update(flags)
        table = self.query_one("#quant-layers", DataTable)
        table.clear()
        for q in d["quant_layers"]:
            ok = q.get("divisible_by_group")
            table.add_row(q["name"], str(q["in_features"]), str(q["out_features"]),
                          "-" if ok is None else ("yes" if ok else "[red]NO[/red]"))
        bad = len(rep.group_size_problems)
        text = f"{len(rep.quant_layers)} layers to quantize" + (
            f"; group size {self.answers.generate.group_size} does not divide {bad} of them" if bad else "")
        if bad:  # shown as an error once the step's status is set
            self.call_after_refresh(self.set_status, text, True)
        return text

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        self.answers.inspect.projector_last_layers = list(event.selection_list.selected)
        self.refresh_answers()


def _fill(node, tree_nodes) -> None:
    for n in tree_nodes or []:
        label = f"{n.get('name')}: {n.get('class')}"
        if n.get("shape"):
            label += f" {n['shape']}"
        if n.get("bias"):
            label += " +bias"
        if n.get("params"):
            label += f" ({n['params']:,} params)"
        child = node.add(label, expand=True)
        _fill(child, n.get("children"))
        if not n.get("children"):
            child.allow_expand = False
