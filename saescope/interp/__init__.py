"""Naming features without an LLM: keyword methods and their shared machinery."""

from saescope.interp.candidates import FeatureKeywords, PhraseEmbedder
from saescope.interp.keywords import KeywordsConfig, name_features, read_keywords

__all__ = ["FeatureKeywords", "KeywordsConfig", "PhraseEmbedder", "name_features", "read_keywords"]
