"""Multi-agent KV reuse: agent templates with placeholders, the KVCOMM anchor pool, a runtime, a LangChain model.

No prefill lives here: a bound template is a BlendRequest, prefilled by the one blender (blend/blender.py),
which calls the anchor pool through blend/anchoring.py's AnchorIndex. Imports run
api -> agents -> blend -> (runner, store, kernels). Entry points:
  AgentRuntime (runtime.py): turns, fully connected rounds, discussions, pipelines in a chosen BlendConfig;
  AgentTemplate / Message (template.py): prompts with {placeholders};
  AnchorPool (anchor_pool.py) with its tensors in the chunk store (anchor_tensors.py) or under a
      directory (anchor_store.py);
  chat_template (chat_layout.py): a conversation laid out with the model's chat template, each message a chunk;
  ChatTurn (chat_turn.py): one streamed chat turn (incremental detokenizer, stop sequences, usage);
  ChunkCacheChatModel (langchain_chat.py): a langchain-core BaseChatModel for LangGraph graphs.
"""
