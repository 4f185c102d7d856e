"""The MoE Lab page: configure one MoE layer, train it on a token stream, watch its routing."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
from matplotlib.figure import Figure

from core.moe.config import BALANCE_LOSSES, GATES

from .session import LabConfig, LabSession, load_heatmap, metrics_figure

PLOT_UPDATES = 10  # plot refreshes per run; each renders two figures (~0.5 s on two busy cores)

INTRO = """\
# MoE Lab
Configure one Mixture-of-Experts layer, stream synthetic token batches through it and train it
on a toy regression (each token cluster has its own target linear map). Raise **skew** to bunch
all tokens together so that an unbalanced router collapses onto a few experts, then turn on a
balance loss or the aux-free bias update and watch the load spread.
"""


def _int_slider(lo: int, hi: int, value: int, label: str, info: str | None = None) -> gr.Slider:
    return gr.Slider(lo, hi, value, step=1, precision=0, label=label, info=info)


def _config(settings: dict[str, Any]) -> LabConfig:
    try:
        return LabConfig.from_flat(settings)
    except ValueError as exc:
        raise gr.Error(str(exc), title="Invalid configuration") from None


def _summary(session: LabSession) -> str:
    s = session.history.summary()
    return (f"**step {s['steps']}** (means of the last 10 steps): task loss {s['loss']:.4f} · "
            f"balance {s['balance']:.3f} · dropped {s['dropped_fraction']:.1%} · "
            f"max violation {s['max_violation']:.2f} · router entropy {s['router_entropy']:.2f} nats")


def _views(session: LabSession) -> tuple[LabSession, str, Figure, Figure]:
    heatmap = load_heatmap(session.history, session.cfg.moe.num_experts)
    return session, _summary(session), heatmap, metrics_figure(session.history)


def train_views(**settings: Any) -> Iterator[tuple[LabSession, str, Figure, Figure]]:
    """Train a new session on `settings` (flat LabConfig fields), yielding it, a summary and the
    two plots about `PLOT_UPDATES` times; a bad configuration raises gr.Error."""
    cfg = _config(settings)
    session = LabSession(cfg)
    every = max(1, cfg.steps // PLOT_UPDATES)
    for step in range(1, cfg.steps + 1):
        session.step()
        if step % every == 0 or step == cfg.steps:
            yield _views(session)


def route_table(session: LabSession | None, text: str, task: int, **settings: Any) -> list[list[str]]:
    """Rows of word, cluster, experts, gate weights; an untrained layer from `settings` routes when
    nothing has been trained yet. `task` is ignored when the layer has no tasks."""
    session = session or LabSession(_config(settings))
    try:
        rows = session.route_text(text, task if session.cfg.moe.num_tasks else None)
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    return [[r["word"], str(r["cluster"]), ", ".join(map(str, r["experts"])),
             ", ".join(f"{w:.3f}" for w in r["weights"])] for r in rows]


def build() -> gr.Blocks:
    """The Lab as a Gradio Blocks app (the server mounts it at /lab)."""
    lab = LabConfig()
    moe = lab.moe
    with gr.Blocks(title="MoE Lab") as page:
        gr.Markdown(INTRO)
        session = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                with gr.Accordion("Layer"):
                    controls = {
                        "num_experts": _int_slider(1, 64, moe.num_experts, "experts"),
                        "top_k": _int_slider(1, 8, moe.top_k, "top-k"),
                        "num_shared_experts": _int_slider(0, 4, moe.num_shared_experts, "shared experts"),
                        "capacity_factor": gr.Slider(0, 4, moe.capacity_factor, step=0.25,
                                                     label="capacity factor", info="0 = dropless"),
                        "gate": gr.Dropdown(list(GATES), value=moe.gate, label="gate"),
                        "renormalize": gr.Checkbox(moe.renormalize, label="renormalise top-k weights",
                                                   info="softmax_topk and sigmoid gates"),
                        "num_groups": _int_slider(1, 8, moe.num_groups, "expert groups"),
                        "top_groups": _int_slider(1, 8, moe.top_groups, "groups per token"),
                        "num_tasks": _int_slider(0, 8, moe.num_tasks, "tasks",
                                                 info="task-aware gating; 0 = off"),
                        "dim": gr.Slider(8, 128, moe.dim, step=8, precision=0, label="model width"),
                        "hidden_dim": gr.Slider(16, 256, moe.hidden_dim, step=16, precision=0,
                                                label="expert hidden width"),
                    }
                with gr.Accordion("Balancing"):
                    controls |= {
                        "balance_loss": gr.Radio(list(BALANCE_LOSSES), value=moe.balance_loss,
                                                 label="balance loss"),
                        "balance_coef": gr.Number(moe.balance_coef, minimum=0, step=0.01,
                                                  label="balance loss coefficient"),
                        "z_loss_coef": gr.Number(moe.z_loss_coef, minimum=0, step=0.001,
                                                 label="z-loss coefficient"),
                        "bias_update_rate": gr.Number(moe.bias_update_rate, minimum=0, step=0.001,
                                                      label="aux-free bias update rate", info="0 = off"),
                    }
                with gr.Accordion("Data and training"):
                    controls |= {
                        "num_clusters": _int_slider(1, 64, lab.num_clusters, "token clusters"),
                        "skew": gr.Slider(0, 6, lab.skew, step=0.5, label="skew",
                                          info="offset shared by all tokens; high = collapse-prone"),
                        "steps": gr.Slider(10, 1000, lab.steps, step=10, precision=0, label="steps"),
                        "batch_size": _int_slider(1, 64, lab.batch_size, "sequences per step"),
                        "seq_len": _int_slider(1, 128, lab.seq_len, "tokens per sequence"),
                        "lr": gr.Number(lab.lr, minimum=0, step=0.001, label="learning rate"),
                        "seed": gr.Number(lab.seed, precision=0, label="seed"),
                    }
                with gr.Row():
                    train_button = gr.Button("Train", variant="primary")
                    stop_button = gr.Button("Stop", variant="stop")
            with gr.Column(scale=2):
                status = gr.Markdown("Press **Train** to start.")
                heatmap = gr.Plot(label="expert load")
                metrics = gr.Plot(label="training metrics")
                gr.Markdown("### Route your own words\nEach word maps to a fixed token vector "
                            "(a seeded hash picks its cluster); the last trained layer routes it.")
                with gr.Row():
                    text = gr.Textbox("my card payment was declined twice today", label="text", scale=4)
                    task = gr.Number(0, precision=0, label="task id", info="used when tasks > 0", scale=1)
                route_button = gr.Button("Route")
                routes = gr.Dataframe(headers=["word", "cluster", "experts", "gate weights"],
                                      datatype="str", interactive=False)

        training = train_button.click(train_views, inputs_kwargs=controls,
                                      outputs=[session, status, heatmap, metrics], api_name="train")
        stop_button.click(None, cancels=[training])
        route_button.click(route_table, inputs=[session, text, task], inputs_kwargs=controls,
                           outputs=routes, api_name="route")
    return page
