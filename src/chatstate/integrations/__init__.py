"""Adapters that let an agent framework keep its history in a chatstate store, one module (and
one extra) per framework:

- :mod:`chatstate.integrations.openai_agents`: the OpenAI Agents SDK's ``Session``
  (``pip install 'chatstate[openai-agents]'``);
- :mod:`chatstate.integrations.langchain`: LangChain's ``BaseChatMessageHistory``
  (``chatstate[langchain]``);
- :mod:`chatstate.integrations.llama_index`: LlamaIndex's ``BaseChatStore``
  (``chatstate[llama-index]``);
- :mod:`chatstate.integrations.pydantic_ai`: pydantic-ai's ``ModelMessage`` lists
  (``chatstate[pydantic-ai]``).

Each keeps its framework's items as they are, in an :class:`~chatstate.stores.ItemStore` over
any chatstate store's backend: bounded, expiring, compressed and encrypted by the store's
options, every write one atomic step with a write id. See docs/integrations/.
"""
