"""The assistant's page: chat with the bank's assistant and see how each turn was understood
(intent, confidence, sources, expert activations); retrain it on your own intents and knowledge.

The page and the JSON API share one assistant per process (`assistant.shared_assistant`).
"""
from __future__ import annotations

import logging
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
from matplotlib.figure import Figure

from apps.settings import cache_dir
from data_connectors.archive import safe_extract_zip
from data_connectors.text_files import LABELLED_SUFFIXES

from .assistant import Reply, shared_assistant
from .dialogue import dialogue_for

log = logging.getLogger(__name__)

MAX_UNZIPPED_BYTES = 50 * 1024 * 1024  # a knowledge zip may expand to at most this much

INTRO = """\
# Customer-service assistant
A fictional bank's support assistant: an MoE intent model picks the intent, the dialogue fills slots
and asks before acting (the actions are demo mocks that change nothing), and knowledge answers quote
the help articles they come from. Ask for an agent to be handed to a human.
"""


def new_session_id() -> str:
    return f"web-{uuid.uuid4().hex[:16]}"


def experts_figure(experts: dict[int, dict[int, float]]) -> Figure:
    """One bar chart per MoE layer: the experts that fired for the message and their mean gate weights."""
    fig = Figure(figsize=(6, 2.6), layout="constrained")
    if not experts:
        fig.text(0.5, 0.5, "no expert activations for this turn", ha="center", va="center")
        return fig
    axes = fig.subplots(1, len(experts), sharey=True, squeeze=False)[0]
    for ax, (layer, weights) in zip(axes, sorted(experts.items())):
        ax.bar([str(e) for e in weights], list(weights.values()), color="tab:blue")
        ax.set(title=f"layer {layer}", xlabel="expert")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean gate weight")
    return fig


def turn_details(reply: Reply) -> str:
    """The turn's intent, confidence, latency, hand-off state and sources as Markdown."""
    text = (f"**intent** `{reply.intent or 'not understood'}` · **confidence** {reply.confidence:.2f} · "
            f"{reply.latency_ms:.0f} ms")
    if reply.handoff:
        text += "\n\n**handed to a human agent**"
    if reply.sources:
        text += "\n\n**sources**\n" + "\n".join(f"- [{s.id}] {s.title} (score {s.score:.3f})"
                                                for s in reply.sources)
    return text


def respond(message: str, chat: list[dict], session_id: str) -> tuple[list[dict], str, str, Figure]:
    """Send `message` in `session_id`: the updated chat, an empty textbox, the details and the chart."""
    try:
        reply = shared_assistant().reply(session_id, message)
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    chat = chat + [{"role": "user", "content": message}, {"role": "assistant", "content": reply.text}]
    return chat, "", turn_details(reply), experts_figure(reply.experts)


def _knowledge_source(upload: Path, folder: Path) -> Path:
    """A knowledge upload as load_knowledge reads it: a zip is unpacked into `folder`, a file kept."""
    if upload.suffix.lower() != ".zip":
        return upload
    # refuses escaping members, links, bombs (declared and actual sizes) with a ValueError
    safe_extract_zip(upload, folder, max_total_bytes=MAX_UNZIPPED_BYTES)
    return folder


def retrain(intents_file: str | None, knowledge_file: str | None,
            progress: gr.Progress = gr.Progress(track_tqdm=True)) -> Iterator[str]:
    """Train an intent model on the uploaded intents and/or index the uploaded knowledge, then switch
    the shared assistant (page and API) to them until the server restarts. A generator: cancelling
    it (the page's Cancel button) stops it at the next step, before the switch."""
    if not intents_file and not knowledge_file:
        raise gr.Error("Upload an intents file, a knowledge file or both.")
    # Imported here: torch, faiss and the MiniLM weights are only needed for retraining.
    from core.text.tokenizer import vocabulary_warning
    from data_connectors.knowledge import collected_warnings, load_knowledge

    from .intents import DEFAULT_TRAIN, IntentModel, read_intent_file
    from .retrieval import KnowledgeIndex, saved_indexes

    model = index = None
    done, notes = [], []   # notes: the readers' warnings (a guessed header, repeated rows), shown to the end
    uploads = [intents_file] if intents_file else []   # the server's folders, left out of messages
    try:
        if intents_file:
            data = read_intent_file(intents_file)
            texts, labels = data.texts, data.labels
            notes += [_without_folder(warning, intents_file) for warning in data.warnings]
            notes += [unknown] if (unknown := vocabulary_warning(texts)) else []
            columns = (f" (text from column `{data.text_column}`, intents from `{data.label_column}`)"
                       if data.text_column else "")
            yield f"Training the intent model on {len(texts)} examples{columns}...{_notes(notes)}"
            model, result = IntentModel.train(texts, labels, DEFAULT_TRAIN)
            if warning := model.calibration_warning:
                notes.append(warning)
            accuracy = "n/a" if result.val_accuracy is None else f"{result.val_accuracy:.1%}"
            done.append(f"intent model ({len(set(labels))} intents, {len(texts)} examples{columns}, held-out "
                        f"accuracy {accuracy})")
        if knowledge_file:
            yield f"Indexing the knowledge...{_notes(notes)}"
            unreadable: list = []
            with tempfile.TemporaryDirectory() as tmp, collected_warnings() as logged:
                uploads += [knowledge_file, tmp]
                source = _knowledge_source(Path(knowledge_file), Path(tmp))
                docs = load_knowledge(source, unreadable=unreadable, exclude=saved_indexes(source))
                notes += [_without_folder(warning, source) for warning in logged]
                notes += [unknown] if (unknown := vocabulary_warning([f"{d.title}\n{d.text}" for d in docs])) else []
                index = KnowledgeIndex.build(docs, cache_dir() / "chat" / "uploaded-index")
            skipped = (f"; {len(unreadable)} unreadable file(s) skipped: "
                       f"{', '.join(Path(f).name for f, _ in unreadable[:5])}" if unreadable else "")
            done.append(f"knowledge index ({len(docs)} documents, {len(index)} chunks{skipped})")
    except (ValueError, zipfile.BadZipFile) as exc:
        message = str(exc)
        for upload in uploads:
            message = _without_folder(message, upload)
        raise gr.Error(message) from None
    # the bank's dialogue when the uploaded intents include all it configures, else one built from their labels
    dialogue = None
    if model is not None:
        dialogue, why = dialogue_for(model.labels)
        if why:
            log.info(why, extra={"event": "chat_config"})
    yield "Switching the assistant to the new " + " and ".join(done) + "..." + _notes(notes)
    shared_assistant().use(intent_model=model, index=index, dialogue_config=dialogue)
    yield "Now answering with the new " + " and ".join(done) + ", until the server restarts." + _notes(notes)


def _notes(notes: list[str]) -> str:
    """The readers' warnings as a Markdown list under the status line ("" when none)."""
    return "".join(f"\n\n**warning:** {note}" for note in notes)


def _without_folder(message: str, path: str | Path) -> str:
    """A reader's message with the server's upload folder left out of the file names it gives."""
    folder = str(Path(path).parent if Path(path).is_file() else Path(path))
    return message.replace(folder + "/", "")


def build() -> gr.Blocks:
    """The assistant's page as a Gradio Blocks app (the server mounts it at /chat)."""
    with gr.Blocks(title="Customer-service assistant") as page:
        gr.Markdown(INTRO)
        with gr.Tab("Chat"):
            session = gr.State(new_session_id)  # one conversation per browser tab
            with gr.Row():
                with gr.Column(scale=3):
                    chat = gr.Chatbot(label="conversation", height=460)
                    message = gr.Textbox(placeholder="e.g. I lost my debit card", show_label=False)
                    with gr.Row():
                        send = gr.Button("Send", variant="primary")
                        restart = gr.Button("New conversation")
                with gr.Column(scale=2):
                    details = gr.Markdown("Each turn's intent, confidence and sources appear here.")
                    chart = gr.Plot(label="expert activations (mean gate weight per expert)")
            gr.Examples(["block my card", "what are the fees for a current account?",
                         "and for business accounts?", "I want to talk to a human"], inputs=message)
        with gr.Tab("Retrain"):
            gr.Markdown("Upload your own intents (a CSV or TSV with a text and a label column, e.g. "
                        "`text,label` or `utterance,intent`; YAML `intents:`; JSON or JSONL records) and/or "
                        "knowledge (a Markdown, HTML, text, CSV, JSON or JSONL file, or a zip of a folder of "
                        "them). Training the intent model takes a few minutes on a CPU; page and API switch "
                        "to the result.")
            with gr.Row():
                intents_file = gr.File(label="intents (.csv, .tsv, .yaml, .json, .jsonl)",
                                       file_types=list(LABELLED_SUFFIXES), type="filepath")
                knowledge_file = gr.File(label="knowledge (file or .zip)", type="filepath")
            with gr.Row():
                train = gr.Button("Retrain", variant="primary")
                cancel = gr.Button("Cancel")
            status = gr.Markdown()

        outputs = [chat, message, details, chart]
        send.click(respond, [message, chat, session], outputs, api_name="chat")
        message.submit(respond, [message, chat, session], outputs, api_name=False)
        restart.click(lambda: (new_session_id(), [], "", None), outputs=[session, chat, details, chart],
                      api_name=False)
        training = train.click(retrain, [intents_file, knowledge_file], status, api_name="retrain")
        cancel.click(lambda: "Cancelled: the assistant keeps its current models.", None, status,
                     cancels=[training], api_name=False)
    return page
