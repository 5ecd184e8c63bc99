"""The pairwise judges on CPU: the tiny model as a local LM judge (its verdicts need not be good; the
plumbing is real), the proxy, both orders per pair, and an OpenAI-compatible endpoint served by a local
HTTP server that runs the same tiny model."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from semrl.core.config import JudgeConfig
from semrl.evaluation.judge import LocalJudge, OpenAIJudge, ProxyJudge, preference

from conftest import read_jsonl


@pytest.fixture(scope="module")
def rows(smoke_repo):
    return read_jsonl(smoke_repo / "data" / "prepared" / "mt" / "dev.jsonl")[:4]


def outputs_of(rows):
    refs = [r["bo"] for r in rows]
    # seed 0: SFT copies the reference, GRPO answers in Chinese; seed 1: the same outputs, sides swapped
    return refs, {("sft", 0): refs, ("grpo", 0): [r["zh"] for r in rows],
                  ("sft", 1): [r["zh"] for r in rows], ("grpo", 1): refs}


def test_proxy_judge_in_both_orders(smoke_repo, rows):
    refs, outputs = outputs_of(rows)
    judge = ProxyJudge(smoke_repo / "models" / "eval_embedder", tie_margin=0.01)
    p = preference(judge, [r["zh"] for r in rows], refs, outputs)
    assert p["pairs"] == 8 and p["orders"] == 2 and p["seeds"] == [0, 1]
    assert p["sft_rate"] == p["grpo_rate"] == 0.5 and p["tie_rate"] == 0.0  # order-blind: no flips
    assert preference(judge, [r["zh"] for r in rows], refs, outputs, max_pairs=3)["pairs"] == 3


def test_the_tiny_model_as_a_local_judge(smoke_repo, rows):
    refs, outputs = outputs_of(rows)
    cfg = JudgeConfig(kind="local", model=str(smoke_repo / "models" / "base"))
    judge = LocalJudge(cfg, batch_size=3)
    items = [{"source": r["zh"], "reference": r["bo"], "first": r["bo"], "second": r["zh"]} for r in rows]
    verdicts = judge.first_is_better(items)
    assert len(verdicts) == 4 and all(isinstance(v, bool) for v in verdicts)
    swapped = judge.first_is_better([{**x, "first": x["second"], "second": x["first"]} for x in items])
    p = preference(judge, [r["zh"] for r in rows], refs, outputs)
    # Every pair has a verdict per order; wins need agreement across orders, the rest are ties.
    agree = sum(a != b for a, b in zip(verdicts, swapped))
    assert p["pairs"] == 8 and p["sft_rate"] + p["grpo_rate"] + p["tie_rate"] == pytest.approx(1.0)
    assert p["sft_rate"] + p["grpo_rate"] == pytest.approx(2 * agree / 8)
    assert p["order_inconsistent_rate"] == pytest.approx(p["tie_rate"])  # a bool judge never abstains


class _ChatCompletions(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible /chat/completions endpoint answering with the tiny model's verdict."""

    judge = None
    seen = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, body, self.headers.get("Authorization")))
        text = body["messages"][0]["content"]
        first = _ChatCompletions.judge.first_is_better_text(text)
        payload = {"choices": [{"message": {"role": "assistant", "content": "A" if first else "B"}}]}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_an_openai_compatible_endpoint(smoke_repo, rows, monkeypatch):
    import torch

    local = LocalJudge(JudgeConfig(kind="local", model=str(smoke_repo / "models" / "base")))

    def first_is_better_text(text):  # the served model: the same next-token rule on the prompt as sent
        from semrl.models.chat import render_prompts

        enc = local.tokenizer(render_prompts(local.tokenizer, [text]), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            last = local.model(**enc).logits[0, -1]
        return bool(last[local.choices[0]] > last[local.choices[1]])

    local.first_is_better_text = first_is_better_text
    _ChatCompletions.judge, _ChatCompletions.seen = local, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatCompletions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("JUDGE_KEY", "k-123")
        cfg = JudgeConfig(kind="openai", model="tiny", base_url=f"http://127.0.0.1:{server.server_port}/v1/",
                          api_key_env="JUDGE_KEY")
        items = [{"source": r["zh"], "reference": r["bo"], "first": r["bo"], "second": r["zh"]} for r in rows]
        assert OpenAIJudge(cfg).first_is_better(items) == local.first_is_better(items)
        path, body, auth = _ChatCompletions.seen[0]
        assert path == "/v1/chat/completions" and auth == "Bearer k-123"
        assert body["temperature"] == 0 and body["max_tokens"] == 1 and rows[0]["bo"] in body["messages"][0]["content"]
    finally:
        server.shutdown()
