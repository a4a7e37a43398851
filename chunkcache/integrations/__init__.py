"""Adapters to other frameworks: LangChain retriever and RAG runnable (langchain.py), AutoGen model client
(autogen.py)."""
