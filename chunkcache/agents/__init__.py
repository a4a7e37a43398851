"""Multi-agent KV reuse: agent templates with placeholders, the KVCOMM anchor pool, a runtime, a LangChain model.

Imports run api -> agents -> blend -> (runner, store, kernels). Entry points:
  AgentRuntime (runtime.py): turns, fully connected rounds, discussions, pipelines in a chosen mode;
  AgentTemplate / Message (template.py): prompts with {placeholders};
  AnchorPool / AnchorStore: KVCOMM anchors in memory / persisted under a directory;
  ChunkCacheChatModel (langchain_chat.py): a langchain-core BaseChatModel for LangGraph graphs.
"""
