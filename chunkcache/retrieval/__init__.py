"""Retrieval: token-aware chunking, MiniLM embeddings, a faiss index whose ids map to stored chunk keys."""
