"""LangChain interfaces of the customer-service assistant: the assistant as a Runnable, the
knowledge base as a retriever.

    chain = assistant_runnable(Assistant.default())
    chain.invoke({"session_id": "lc-1", "message": "block my card"}).text

    retriever = KnowledgeRetriever(index=load_default_index(), k=4)
    context = (retriever | RunnableLambda(format_docs)).invoke("how do I report a stolen card?")
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableLambda

from .assistant import Assistant, Reply
from .retrieval import KnowledgeIndex


class ChatInput(TypedDict):
    session_id: str  # the conversation
    message: str     # the customer's message


def assistant_runnable(assistant: Assistant) -> Runnable[ChatInput, Reply]:
    """`assistant.reply` as a Runnable, so it composes with chains, batching and callbacks."""

    def reply(chat: ChatInput) -> Reply:
        return assistant.reply(chat["session_id"], chat["message"])

    return RunnableLambda(reply, name="customer_service_assistant")


class KnowledgeRetriever(BaseRetriever):
    """A KnowledgeIndex as a retriever: one Document per passage, metadata id, title, score, source."""

    index: KnowledgeIndex
    k: int = 4  # passages per query

    def _get_relevant_documents(self, query: str, *,
                                run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [Document(page_content=p.text, id=p.id,
                         metadata={"id": p.id, "title": p.title, "score": p.score, "source": p.source})
                for p in self.index.search(query, self.k)]


def format_docs(docs: Sequence[Document]) -> str:
    """Retrieved documents as prompt context: "[id] title" then the text, blocks separated by blank lines."""
    return "\n\n".join(f"[{d.metadata['id']}] {d.metadata['title']}\n{d.page_content}" for d in docs)
