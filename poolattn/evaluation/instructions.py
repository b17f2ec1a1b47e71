"""Task instructions: one table, E5-mistral's wording (Wang et al. 2024, Table 13), which the paper reuses.

Queries (and both sides of symmetric tasks: STS, classification, clustering, pair classification) get the
instruction; retrieval and reranking documents get none. Tasks missing from the table fall back to the prompt in
mteb's own task metadata (mteb ships E5-mistral's wording for most tasks), then to mteb's default for the task type.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_STS = "Retrieve semantically similar text."
_CQA = ("Given a question, retrieve detailed question descriptions from Stackexchange that are duplicates to the "
        "given question")

INSTRUCTIONS: dict[str, str] = {
    # STS
    **{t: _STS for t in ("STS12", "STS13", "STS14", "STS15", "STS16", "STS17", "STS22", "STSBenchmark", "SICK-R",
                         "BIOSSES")},
    # Classification
    "AmazonCounterfactualClassification":
        "Classify a given Amazon customer review text as either counterfactual or not-counterfactual",
    "AmazonPolarityClassification": "Classify Amazon reviews into positive or negative sentiment",
    "AmazonReviewsClassification": "Classify the given Amazon review into its appropriate rating category",
    "Banking77Classification": "Given a online banking query, find the corresponding intents",
    "EmotionClassification": "Classify the emotion expressed in the given Twitter message into one of the six "
                             "emotions: anger, fear, joy, love, sadness, and surprise",
    "ImdbClassification": "Classify the sentiment expressed in the given movie review text from the IMDB dataset",
    "MassiveIntentClassification": "Given a user utterance as query, find the user intents",
    "MassiveScenarioClassification": "Given a user utterance as query, find the user scenarios",
    "MTOPDomainClassification": "Classify the intent domain of the given utterance in task-oriented conversation",
    "MTOPIntentClassification": "Classify the intent of the given utterance in task-oriented conversation",
    "ToxicConversationsClassification": "Classify the given comments as either toxic or not toxic",
    "TweetSentimentExtractionClassification":
        "Classify the sentiment of a given tweet as either positive, negative, or neutral",
    # Clustering (the flat `.v2` tasks use the same wording)
    "ArxivClusteringP2P": "Identify the main and secondary category of Arxiv papers based on the titles and abstracts",
    "ArxivClusteringS2S": "Identify the main and secondary category of Arxiv papers based on the titles",
    "BiorxivClusteringP2P": "Identify the main category of Biorxiv papers based on the titles and abstracts",
    "BiorxivClusteringS2S": "Identify the main category of Biorxiv papers based on the titles",
    "MedrxivClusteringP2P": "Identify the main category of Medrxiv papers based on the titles and abstracts",
    "MedrxivClusteringS2S": "Identify the main category of Medrxiv papers based on the titles",
    "RedditClustering": "Identify the topic or theme of Reddit posts based on the titles",
    "RedditClusteringP2P": "Identify the topic or theme of Reddit posts based on the titles and posts",
    "StackExchangeClustering": "Identify the topic or theme of StackExchange posts based on the titles",
    "StackExchangeClusteringP2P": "Identify the topic or theme of StackExchange posts based on the given paragraphs",
    "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
    # Pair classification
    "SprintDuplicateQuestions": "Retrieve duplicate questions from Sprint forum",
    "TwitterSemEval2015": "Retrieve tweets that are semantically similar to the given tweet",
    "TwitterURLCorpus": "Retrieve tweets that are semantically similar to the given tweet",
    # Reranking
    "AskUbuntuDupQuestions": "Retrieve duplicate questions from AskUbuntu forum",
    "MindSmallReranking": "Retrieve relevant news articles based on user browsing history",
    "SciDocsRR": "Given a title of a scientific paper, retrieve the titles of other relevant papers",
    "StackOverflowDupQuestions": "Retrieve duplicate questions from StackOverflow forum",
    # Summarization
    "SummEval": "Given a news summary, retrieve other semantically similar summaries",
    # Retrieval (query side only)
    "ArguAna": "Given a claim, find documents that refute the claim",
    "ClimateFEVER": "Given a claim about climate change, retrieve documents that support or refute the claim",
    "DBPedia": "Given a query, retrieve relevant entity descriptions from DBPedia",
    "FEVER": "Given a claim, retrieve documents that support or refute the claim",
    "FiQA2018": "Given a financial question, retrieve user replies that best answer the question",
    "HotpotQA": "Given a multi-hop question, retrieve documents that can help answer the question",
    "MSMARCO": "Given a web search query, retrieve relevant passages that answer the query",
    "NFCorpus": "Given a question, retrieve relevant documents that best answer the question",
    "NQ": "Given a question, retrieve Wikipedia passages that answer the question",
    "QuoraRetrieval": "Given a question, retrieve questions that are semantically equivalent to the given question",
    "SCIDOCS": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
    "SciFact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "Touche2020": "Given a question, retrieve detailed and persuasive arguments that answer the question",
    "TRECCOVID": "Given a query on COVID-19, retrieve documents that answer the query",
    **{f"CQADupstack{s}Retrieval": _CQA for s in ("Android", "English", "Gaming", "Gis", "Mathematica", "Physics",
                                                  "Programmers", "Stats", "Tex", "Unix", "Webmasters", "Wordpress")},
    # RAR-b reasoning retrieval (its authors' instructions, as mteb ships them)
    "ARCChallenge": "Retrieve the answer to the question.",
    "SIQA": "Given the following context and question, retrieve the correct answer.",
}


def load_overrides(overrides: Mapping[str, str | None] | str | Path | None) -> dict[str, str | None]:
    """A dict, or a YAML/JSON file of {task name: instruction}; None or "" switches a task's instruction off."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        data: Any = dict(overrides)
    else:
        path = Path(overrides)
        if not path.exists():
            raise FileNotFoundError(f"instruction file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    if not isinstance(data, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                             for k, v in data.items()):
        raise ValueError(f"instructions must map task names to strings (or null), got {type(data).__name__}: "
                         f"{str(data)[:200]}")
    return data


def instruction_for(task_names: list[str], task_metadata: Any = None,
                    overrides: Mapping[str, str | None] | None = None) -> str | None:
    """The query-side instruction of a task, looked up under each of its names (ours first, then mteb's)."""
    overrides = overrides or {}
    for name in task_names:
        if name in overrides:
            return overrides[name] or None
    for name in task_names:
        for key in (name, name.removesuffix(".v2")):
            if key in INSTRUCTIONS:
                return INSTRUCTIONS[key]
    if task_metadata is not None:
        prompt = task_metadata.prompt
        if isinstance(prompt, dict):
            prompt = prompt.get("query")
        if prompt:
            return prompt
        from mteb.abstasks.abstask import get_abstask_prompt

        return get_abstask_prompt(task_metadata.name) or None
    return None
