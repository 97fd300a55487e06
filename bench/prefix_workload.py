"""Workloads and the client side of ``python -m bench prefix-routing``.

Two seeded workloads, driven through the gateway with the official ``openai`` client
(streaming, so time to first token is seen):

* **shared prefixes**: many conversations, each opening with one of a few long system
  prompts, grown turn by turn (each turn resends the whole conversation, as chat
  clients do, with the model's real answer appended);
* **no shared prefix**: single-turn requests whose prompts share nothing, for the
  throughput check.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import openai


@dataclass(frozen=True)
class Workload:
    """What to send: shared-prefix conversations and unrelated single prompts."""

    systems: int = 10
    system_chars: int = 2400
    conversations: int = 12
    turns: int = 4
    user_chars: int = 160
    unrelated: int = 16
    unrelated_chars: int = 2000
    concurrency: int = 4
    max_tokens: int = 12
    seed: int = 14


@dataclass
class Sample:
    """One request as the client saw it."""

    engine: str
    ttft_s: float
    latency_s: float
    completion_tokens: int
    reason: str
    turn: int = 0


@dataclass
class RunResult:
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0


_WORD_TEXT = (
    "about after again air all also always animal answer area around ask away back ball"
    " base bear beat because become bed before began begin being below best better between"
    " big bird black blue board boat body book both box boy bring brother brown build busy"
    " call came can car care carry case cat cause center certain change check child city"
    " class clear close cold color come common control cook corn correct cost could count"
    " country course cover cross cry current cut dark day deep did differ direct does dog"
    " door down draw dream drive dry during each early earth east eat edge egg end enough"
    " even evening event ever every example eye face fact fall family far farm fast father"
    " feel field figure fill final find fine fire first fish five floor flow flower fly"
    " follow food foot force forest form found four free friend front full game garden"
    " gather general gentle girl give glass gold good govern grass great green ground group"
    " grow guess half hand happen happy hard head hear heart heat heavy help high hill hold"
    " home hope horse hot hour house hunt idea inch island keep kind king know lake land"
    " language large last late laugh lead learn leave left letter level light line list"
    " listen little live long look love low machine main make map mark market master matter"
    " measure meet metal middle might mile milk mind minute miss money moon morning mother"
    " mountain move music name nation nature near need never new night noon north note"
    " notice number ocean offer office often open order other page paint paper part party"
    " pass past pattern people perhaps person picture piece place plain plan plant play"
    " point port pose position power press pretty print problem produce product program"
    " pull push question quick quiet race rain raise reach read ready real record region"
    " remember repeat report rest result rich ride right river road rock room root rope"
    " round rule safe sail salt same sand save school science score sea season seat second"
    " seed sell send sense serve settle shape share sharp ship shore short show side sign"
    " silver simple sing sister size skill skin sky sleep slow small smile snow soft soil"
    " soldier solve song sound south space speak special speed spell spring square stand"
    " star start state station stay steam steel step stick still stone stood store story"
    " straight strange stream street strong student study subject sugar summer sun supply"
    " surface table tail talk teach team tell test thank thick thin think third thought"
    " thousand three through tie time tiny together tool top touch toward town track trade"
    " train travel tree trip true try turn type under unit until upon usual valley value"
    " village visit voice wait walk wall warm wash watch water wave weather week weight west"
    " wheel white whole wide wild wind window winter wish woman wonder wood word work world"
    " write yard year yellow young"
)
WORDS = tuple(_WORD_TEXT.split())


class Text:
    """Seeded text of common English words (about 5 characters per token)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def __call__(self, chars: int) -> str:
        out: list[str] = []
        size = 0
        while size < chars:
            w = self.rng.choice(WORDS)
            out.append(w)
            size += len(w) + 1
        return " ".join(out)


def conversations(w: Workload) -> list[list[dict[str, str]]]:
    """Each conversation's opening (system prompt + first user turn)."""
    text = Text(w.seed)
    systems = [f"You are assistant {i}. Notes: " + text(w.system_chars) for i in range(w.systems)]
    return [[{"role": "system", "content": systems[i % w.systems]}] for i in range(w.conversations)]


def unrelated_prompts(w: Workload) -> list[str]:
    text = Text(w.seed + 1)
    return [f"Request {i}: " + text(w.unrelated_chars) for i in range(w.unrelated)]


async def _one(
    client: openai.AsyncOpenAI, model: str, messages: list[dict[str, str]], w: Workload
) -> tuple[Sample, str]:
    t0 = time.perf_counter()
    raw = await client.chat.completions.with_raw_response.create(
        model=model,
        messages=messages,  # type: ignore[call-overload,unused-ignore]
        max_tokens=w.max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    stream = raw.parse()
    ttft: float | None = None
    parts: list[str] = []
    tokens = 0
    async for chunk in stream:
        if ttft is None and chunk.choices:
            ttft = time.perf_counter() - t0
        for c in chunk.choices:
            parts.append(c.delta.content or "")
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    latency = time.perf_counter() - t0
    sample = Sample(
        engine=raw.headers.get("x-tollgate-engine", "?"),
        ttft_s=ttft if ttft is not None else latency,
        latency_s=latency,
        completion_tokens=tokens,
        reason=raw.headers.get("x-tollgate-route-reason", ""),
    )
    return sample, "".join(parts)


async def run_conversations(client: openai.AsyncOpenAI, model: str, w: Workload) -> RunResult:
    """Workers take conversations from a queue and play their turns in order."""
    queue: asyncio.Queue[list[dict[str, str]]] = asyncio.Queue()
    for c in conversations(w):
        queue.put_nowait(c)
    result = RunResult()
    text = Text(w.seed + 2)

    async def worker() -> None:
        while not queue.empty():
            msgs = queue.get_nowait()
            for turn in range(w.turns):
                msgs.append({"role": "user", "content": f"Turn {turn}: " + text(w.user_chars)})
                try:
                    sample, answer = await _one(client, model, msgs, w)
                except openai.OpenAIError:
                    result.errors += 1
                    break
                sample.turn = turn
                result.samples.append(sample)
                msgs.append({"role": "assistant", "content": answer or "ok"})

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(w.concurrency)))
    result.wall_s = time.perf_counter() - t0
    return result


async def run_unrelated(client: openai.AsyncOpenAI, model: str, w: Workload) -> RunResult:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in unrelated_prompts(w):
        queue.put_nowait(p)
    result = RunResult()

    async def worker() -> None:
        while not queue.empty():
            prompt = queue.get_nowait()
            try:
                sample, _ = await _one(client, model, [{"role": "user", "content": prompt}], w)
            except openai.OpenAIError:
                result.errors += 1
                continue
            result.samples.append(sample)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(w.concurrency)))
    result.wall_s = time.perf_counter() - t0
    return result


def summary(r: RunResult) -> dict[str, Any]:
    from bench.stats import percentiles

    ttft = [s.ttft_s for s in r.samples]
    tokens = sum(s.completion_tokens for s in r.samples)
    by_engine: dict[str, int] = {}
    for s in r.samples:
        by_engine[s.engine] = by_engine.get(s.engine, 0) + 1
    later = [s.ttft_s for s in r.samples if s.turn > 0]
    return {
        "requests": len(r.samples),
        "errors": r.errors,
        "wall_s": round(r.wall_s, 2),
        "req_per_s": round(len(r.samples) / r.wall_s, 3) if r.wall_s else None,
        "tokens_per_s": round(tokens / r.wall_s, 2) if r.wall_s else None,
        "ttft_ms": percentiles(ttft, (50, 90, 99), digits=1),
        "ttft_later_turns_ms": percentiles(later, (50, 99), digits=1),
        "latency_ms": percentiles([s.latency_s for s in r.samples], (50, 99), digits=1),
        "by_engine": by_engine,
        "reason_example": r.samples[-1].reason if r.samples else "",
    }
