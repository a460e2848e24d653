"""`python -m llmcore.chat` driven through a real pseudo-terminal, as a user at a terminal.

The child runs on the tiny llama_gqa checkpoint with greedy settings; each streamed reply is
compared, byte for byte as the terminal shows it, with LLM.chat on the same conversation computed
here in-process. The child gets the pty as its controlling terminal, so Ctrl-C is the real thing:
byte 0x03 typed into the terminal, turned into SIGINT by the line discipline.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import pytest

pytest.importorskip("sentencepiece")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PROMPT = b">>> "
CTRL_C, CTRL_D = b"\x03", b"\x04"
SHORT_REPLY_TOKENS = 24
LONG_MAX_MODEL_LEN = 32768  # room for a reply far longer than the test waits for
TIMEOUT_S = 10.0
DEVICE = os.environ.get("LLMCORE_TEST_DEVICE", "cpu")

# Runs in the child before the chat: a new session whose controlling terminal is the pty on
# stdin, so 0x03 typed there raises SIGINT in the chat process.
_TRAMPOLINE = ("import fcntl, os, runpy, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
               "sys.argv = ['llmcore.chat'] + sys.argv[1:]; runpy.run_module('llmcore.chat', run_name='__main__')")


class PtyChat:
    """The chat CLI on the slave side of a pty; reads and writes on the master side."""

    def __init__(self, args: List[str], env: dict) -> None:
        master, slave = os.openpty()
        self.proc = subprocess.Popen([sys.executable, "-c", _TRAMPOLINE, *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.master = master
        self.buf = b""
        self.log = b""  # everything the terminal showed, for failure messages

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def _fill(self, deadline: float) -> bool:
        """Reads what is available before `deadline`; False at EOF (the child closed the pty)."""
        ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: no process holds the slave side any more
            return False
        self.buf += data
        self.log += data
        return bool(data)

    def read_until(self, pattern: bytes, timeout: float = TIMEOUT_S) -> bytes:
        """Consumes and returns the output up to and including the first `pattern`."""
        deadline = time.monotonic() + timeout
        while pattern not in self.buf:
            if time.monotonic() > deadline or not self._fill(deadline):
                raise AssertionError(f"no {pattern!r} in the terminal within {timeout}s; it showed:\n"
                                     f"{self.log[-3000:]!r}")
        end = self.buf.index(pattern) + len(pattern)
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def read_at_least(self, num_bytes: int, timeout: float = TIMEOUT_S) -> bytes:
        """Waits until `num_bytes` unconsumed bytes are there; returns (without consuming) them."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < num_bytes:
            if time.monotonic() > deadline or not self._fill(deadline):
                raise AssertionError(f"fewer than {num_bytes} bytes within {timeout}s: {self.log[-3000:]!r}")
        return self.buf

    def type_line(self, line: str) -> bytes:
        """Types `line` and Enter; returns the echo up to the end of the typed line."""
        self.send(line.encode() + b"\r")
        return self.read_until(line.encode() + b"\r\n")

    def turn(self, line: str) -> bytes:
        """Types a message; returns the reply exactly as the terminal showed it (up to the prompt)."""
        self.type_line(line)
        shown = self.read_until(b"\r\n" + PROMPT)
        return shown[: -len(b"\r\n" + PROMPT)]

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._fill(min(deadline, time.monotonic() + 0.1))
        if self.proc.poll() is None:
            raise AssertionError(f"the chat did not exit within {timeout}s; it showed:\n{self.log[-3000:]!r}")
        return self.proc.returncode


def on_terminal(text: str) -> bytes:
    """What the terminal shows for `text` written by the child (the pty turns \\n into \\r\\n)."""
    return text.encode("utf-8").replace(b"\n", b"\r\n")


def child_env() -> dict:
    import llmcore

    env = dict(os.environ)
    package_root = str(Path(llmcore.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONIOENCODING"] = "utf-8"
    env["TERM"] = "dumb"  # plain readline output: no bracketed-paste or meta-key escapes
    env.pop("PYTHONSTARTUP", None)
    return env


@pytest.fixture(scope="module")
def chat_models(checkpoint, tmp_path_factory):
    """(a checkpoint with no chat template, a copy with a ChatML chat_template.jinja and a long
    context, the ChatML template file)."""
    plain = Path(checkpoint("llama_gqa"))
    root = tmp_path_factory.mktemp("chat_cli")
    templated = root / "llama_gqa_chatml"
    shutil.copytree(plain, templated)
    (templated / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    config = json.loads((templated / "config.json").read_text())
    config["max_position_embeddings"] = LONG_MAX_MODEL_LEN  # default RoPE: positions only, same weights
    (templated / "config.json").write_text(json.dumps(config))
    template_file = root / "chatml.jinja"
    template_file.write_text(CHATML, encoding="utf-8")
    return plain, templated, template_file


@pytest.fixture(scope="module")
def reference(llmcore, chat_models):
    """reference(conversation, max_tokens) -> LLM.chat's greedy reply text (EOS ignored)."""
    _, templated, _ = chat_models
    llm = llmcore.LLM(model=str(templated), device=DEVICE, dtype="float32", seed=0,
                      max_model_len=1024, num_gpu_blocks_override=256)

    def reply(conversation: List[dict], max_tokens: int = SHORT_REPLY_TOKENS, system: Optional[str] = None) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + conversation
        params = llmcore.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        out = llm.chat(messages, params, use_tqdm=False)[0].outputs[0]
        assert len(out.token_ids) == max_tokens
        return out.text

    yield reply
    llm.shutdown()


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def test_chat_history_clear_and_exit(chat_models, reference):
    plain, _, template_file = chat_models
    chat = PtyChat(["--model", str(plain), "--chat-template", str(template_file), "--device", DEVICE,
                    "--dtype", "float32", "--temperature", "0", "--max-tokens", str(SHORT_REPLY_TOKENS),
                    "--ignore-eos", "--seed", "0"], child_env())
    try:
        chat.read_until(PROMPT, timeout=20.0)  # model load
        first, second = "Hello there, who are you?", "Tell me about the river."

        reply1 = reference([user(first)])
        assert chat.turn(first) == on_terminal(reply1)

        with_history = reference([user(first), assistant(reply1), user(second)])
        fresh = reference([user(second)])
        assert with_history != fresh, "the fixture model ignores the history; the checks below prove nothing"
        assert chat.turn(second) == on_terminal(with_history)

        chat.type_line("/clear")
        chat.read_until(PROMPT)
        assert chat.turn(second) == on_terminal(fresh)

        chat.type_line("/exit")
        assert chat.wait() == 0
    finally:
        chat.close()


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(chat_models, reference):
    _, templated, _ = chat_models
    system = "You are a helpful assistant."
    # max_tokens left to the context (32768 - prompt): a reply far longer than the test waits for.
    chat = PtyChat(["--model", str(templated), "--device", DEVICE, "--dtype", "float32", "--temperature", "0",
                    "--ignore-eos", "--system", system], child_env())
    try:
        chat.read_until(PROMPT, timeout=20.0)
        for message in ("Write a very long story.", "What time is it?"):
            # The history holds only the system prompt: the stopped first turn was dropped.
            head = on_terminal(reference([user(message)], max_tokens=8, system=system)).rstrip(b"\xef\xbf\xbd")
            chat.type_line(message)
            streamed = chat.read_at_least(len(head) + 64)
            assert streamed.startswith(head)
            # The child's engine has one sequence slot: the second message streams only once the
            # first request is gone, so a Ctrl-C that did not abort it would stall this read.
            chat.send(CTRL_C)
            chat.read_until(b"[reply stopped]\r\n" + PROMPT)
        assert chat.proc.poll() is None, "Ctrl-C during a reply must not end the chat"

        chat.send(CTRL_D)  # at the empty prompt: quit
        assert chat.wait() == 0
    finally:
        chat.close()


def test_ctrl_c_at_the_prompt_exits(chat_models):
    _, templated, _ = chat_models
    chat = PtyChat(["--model", str(templated), "--device", DEVICE, "--max-tokens", "4"], child_env())
    try:
        chat.read_until(PROMPT, timeout=20.0)
        # A keystroke within milliseconds of the prompt can be lost while readline sets up the
        # terminal (seen ~1 run in 4); a person cannot type that fast, so wait as one would.
        time.sleep(0.5)
        chat.send(CTRL_C)
        assert chat.wait() == 0
    finally:
        chat.close()


def test_model_without_chat_template_exits_2(chat_models):
    plain, _, _ = chat_models
    proc = subprocess.run([sys.executable, "-m", "llmcore.chat", "--model", str(plain), "--device", DEVICE],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=child_env(), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "no chat template" in proc.stderr and "--chat-template" in proc.stderr, proc.stderr
    assert ">>>" not in proc.stdout
