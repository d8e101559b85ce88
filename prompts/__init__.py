"""Prompt templates, loaded as package data. Installed as ``metallmix.prompts``."""
