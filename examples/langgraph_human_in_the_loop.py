"""Human in the loop with LangGraph and Stowage: pause, exit, resume in another process.

A small editorial graph drafts an article, then asks a human whether to publish it
(``interrupt``). The process that started it exits; any other process, on any
machine, resumes the same thread from Stowage with the human's answer::

    export STOWAGE_URL=http://127.0.0.1:7071 STOWAGE_API_KEY=stw_...   # stowage keys create --tenant demo
    python examples/langgraph_human_in_the_loop.py start --thread article-1 --topic "Serverless storage"
    python examples/langgraph_human_in_the_loop.py resume --thread article-1 --answer approve
    python examples/langgraph_human_in_the_loop.py history --thread article-1

Each command prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, interrupt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.langgraph_savers import RemoteCheckpointSaver


class Article(TypedDict):
    topic: str
    draft: str
    feedback: Annotated[list[str], operator.add]
    status: str


def write_draft(state: Article) -> dict[str, Any]:
    return {"draft": f"{state['topic']}: a short article, ready for review.", "status": "drafted"}


def human_review(state: Article) -> dict[str, Any]:
    # Pauses the graph here; the value given to Command(resume=...) comes back as `answer`.
    answer = interrupt({"question": "Publish this draft? (approve / reject)", "draft": state["draft"]})
    return {"feedback": [answer], "status": "approved" if answer == "approve" else "rejected"}


def publish(state: Article) -> dict[str, Any]:
    return {"status": "published"}


def after_review(state: Article) -> str:
    return "publish" if state["status"] == "approved" else END


def build_graph(checkpointer: Any) -> CompiledStateGraph:
    builder = StateGraph(Article)
    builder.add_node("write_draft", write_draft)
    builder.add_node("human_review", human_review)
    builder.add_node("publish", publish)
    builder.add_edge(START, "write_draft")
    builder.add_edge("write_draft", "human_review")
    builder.add_conditional_edges("human_review", after_review, ["publish", END])
    builder.add_edge("publish", END)
    return builder.compile(checkpointer=checkpointer)


def history(graph: CompiledStateGraph, config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every checkpoint of the thread, newest first."""
    return [{"checkpoint_id": snapshot.config["configurable"]["checkpoint_id"],
             "step": snapshot.metadata.get("step"), "source": snapshot.metadata.get("source"),
             "next": list(snapshot.next), "status": snapshot.values.get("status")}
            for snapshot in graph.get_state_history(config)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "resume", "history"])
    parser.add_argument("--thread", required=True, help="LangGraph thread id")
    parser.add_argument("--topic", default="Unified storage for AI agents")
    parser.add_argument("--answer", default="approve", help="The human's answer when resuming")
    args = parser.parse_args(argv)
    url, key = os.environ.get("STOWAGE_URL"), os.environ.get("STOWAGE_API_KEY")
    if not url or not key:
        parser.error("set STOWAGE_URL and STOWAGE_API_KEY (create a key with `stowage keys create --tenant demo`)")
    config = {"configurable": {"thread_id": args.thread}}
    with RemoteCheckpointSaver(url, key) as saver:
        graph = build_graph(saver)
        if args.command == "start":
            result = graph.invoke({"topic": args.topic, "draft": "", "feedback": [], "status": "new"}, config)
            paused = [item.value for item in result.get("__interrupt__", [])]
            output: dict[str, Any] = {"thread": args.thread, "interrupt": paused, "status": result["status"]}
        elif args.command == "resume":
            result = graph.invoke(Command(resume=args.answer), config)
            output = {"thread": args.thread, "state": result, "history": history(graph, config)}
        else:
            output = {"thread": args.thread, "next": list(graph.get_state(config).next),
                      "history": history(graph, config)}
    print(json.dumps(output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
