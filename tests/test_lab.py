"""MoE Lab: session training and routing, plots, and the page's handlers."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest

from apps.lab.session import LabConfig, LabSession, load_heatmap, metrics_figure

TINY = dict(dim=16, hidden_dim=32, num_experts=4, top_k=2, batch_size=2, seq_len=16)


def test_history_has_one_entry_per_step():
    session = LabSession(LabConfig.from_flat(TINY))
    history = session.train(30)
    assert len(history) == 30
    for name in ("loss", "aux_loss", "balance", "dropped_fraction", "max_violation", "router_entropy"):
        assert len(getattr(history, name)) == 30
    tokens = TINY["batch_size"] * TINY["seq_len"]
    assert all(len(load) == 4 and sum(load) == tokens * 2 for load in history.expert_load)
    assert history.loss[-1] < history.loss[0]
    session.train(5)  # training continues the same history
    assert len(session.history) == 35


@pytest.mark.parametrize("balancing", [dict(balance_loss="kl", balance_coef=0.1),
                                       dict(balance_loss="none", bias_update_rate=0.05)])
def test_balancing_spreads_a_skewed_stream(balancing):
    base = dict(dim=16, hidden_dim=32, num_experts=8, batch_size=4, seq_len=32, skew=4.0, seed=0)
    off = LabSession(LabConfig.from_flat({**base, "balance_loss": "none"})).train(40).summary()
    on = LabSession(LabConfig.from_flat({**base, **balancing})).train(40).summary()
    assert off["balance"] < 0.5  # the skewed stream collapses onto few experts
    assert on["balance"] > off["balance"] + 0.1


def test_route_text_gives_experts_per_word():
    session = LabSession(LabConfig.from_flat(TINY))
    rows = session.route_text("Refund my order, please! Refund")
    assert [r["word"] for r in rows] == ["Refund", "my", "order", "please", "Refund"]
    for r in rows:
        assert len(r["experts"]) == 2 and all(0 <= e < 4 for e in r["experts"])
        assert sum(r["weights"]) == pytest.approx(1, abs=1e-2)
    assert rows[0] == {**rows[4], "word": "Refund"}  # a word always routes the same way
    again = LabSession(LabConfig.from_flat(TINY)).route_text("order")
    assert again[0]["cluster"] == rows[2]["cluster"] and again[0]["experts"] == rows[2]["experts"]
    assert session.route_text("  ...  ") == []


def test_route_text_with_tasks():
    session = LabSession(LabConfig.from_flat({**TINY, "num_tasks": 3}))
    session.train(3)
    assert len(session.route_text("hello world", task=2)) == 2
    with pytest.raises(ValueError, match="task must be in"):
        session.route_text("hello", task=3)


@pytest.mark.parametrize("settings, message", [
    ({"top_k": 9}, "top_k .* exceeds num_experts"),
    ({"num_experts": 6, "num_groups": 4}, "must divide"),
    ({"gate": "argmax"}, "gate must be one of"),
    ({"steps": 0}, "steps must be >= 1"),
    ({"experts": 4}, "unknown Lab settings: experts"),
])
def test_bad_config_raises_clear_error(settings, message):
    with pytest.raises(ValueError, match=message):
        LabConfig.from_flat(settings)


def test_plots_cover_every_step_and_expert():
    session = LabSession(LabConfig.from_flat(TINY))
    session.train(7)
    heatmap = load_heatmap(session.history, num_experts=4)
    assert heatmap.axes[0].images[0].get_array().shape == (4, 7)
    metrics = metrics_figure(session.history)
    assert [len(ax.lines[0].get_xdata()) for ax in metrics.axes] == [7, 7, 7, 7]


def test_page_streams_training_and_routes_words(monkeypatch):
    import gradio as gr
    from apps.lab import page

    monkeypatch.setattr(page, "PLOT_UPDATES", 3)
    updates = list(page.train_views(**TINY, steps=10))
    assert len(updates) == 4  # every 3 steps, and the last
    session, summary, _, _ = updates[-1]
    assert len(session.history) == 10 and "**step 10**" in summary
    rows = page.route_table(session, "card declined", 0)
    assert [r[0] for r in rows] == ["card", "declined"] and len(rows[0][2].split(", ")) == 2
    with pytest.raises(gr.Error, match="top_k"):
        next(page.train_views(**{**TINY, "top_k": 5}))
