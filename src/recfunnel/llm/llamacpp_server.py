"""llama-cpp-python's OpenAI-compatible server, with models in plain CPU buffers.

``python -m recfunnel.llm.llamacpp_server --model <gguf> ...`` takes the same arguments as
``python -m llama_cpp.server``; it only loads weights the way recfunnel's in-process
back-end does (see :func:`recfunnel.llm.llamacpp.plain_cpu_buffers`), so it also runs on
CPUs whose AMX unit the kernel does not enable.
"""

from __future__ import annotations


def main() -> None:
    from llama_cpp.server.__main__ import main as serve

    from recfunnel.llm.llamacpp import plain_cpu_buffers

    with plain_cpu_buffers():
        serve()


if __name__ == "__main__":
    main()
